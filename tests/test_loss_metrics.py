"""Loss, metrics and the learning-rate schedule against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from faceparse.losses import DeepSupervisionLoss, _class_overlap, soft_dice_loss
from faceparse.metrics import SegmentationMetrics, scores_from_confusion
from faceparse.training.schedulers import cosine_with_warmup

IGNORE = 255
C = 4

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def reference_ce(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted mean of -log softmax at the target class over non-ignored pixels."""
    valid = target != IGNORE
    safe = torch.where(valid, target, 0)
    nll = -logits.log_softmax(1).gather(1, safe[:, None])[:, 0]
    w = torch.ones_like(nll) if weight is None else weight[safe]
    return (nll * w)[valid].sum() / w[valid].sum()


@pytest.fixture
def batch() -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, C, 5, 6, generator=g)
    aux = [torch.randn(2, C, 5, 6, generator=g) for _ in range(3)]
    target = torch.randint(0, C, (2, 5, 6), generator=g)
    target[0, :2] = IGNORE
    target[1, :, 0] = IGNORE
    return logits, aux, target


def test_loss_is_main_plus_weighted_mean_aux(batch) -> None:
    logits, aux, target = batch
    out = DeepSupervisionLoss()(logits, aux, target)
    main = F.cross_entropy(logits, target, ignore_index=IGNORE)
    aux_ce = [F.cross_entropy(a, target, ignore_index=IGNORE) for a in aux]
    torch.testing.assert_close(main, reference_ce(logits, target))
    torch.testing.assert_close(out["loss_main"], main)
    torch.testing.assert_close(out["loss_aux"], sum(aux_ce) / 3)
    torch.testing.assert_close(out["loss"], main + 0.4 * sum(aux_ce) / 3)


def test_aux_weight_is_used(batch) -> None:
    logits, aux, target = batch
    out = DeepSupervisionLoss(aux_weight=1.5)(logits, aux, target)
    torch.testing.assert_close(out["loss"], out["loss_main"] + 1.5 * out["loss_aux"])


def test_loss_without_aux_is_main_only(batch) -> None:
    logits, _, target = batch
    out = DeepSupervisionLoss()(logits, [], target)
    torch.testing.assert_close(out["loss"], reference_ce(logits, target))
    assert "loss_aux" not in out


def test_ignored_pixels_do_not_matter(batch) -> None:
    logits, aux, target = batch
    loss = DeepSupervisionLoss()
    before = loss(logits, aux, target)["loss"]
    ignored = (target == IGNORE)[:, None].expand_as(logits)
    noise = torch.randn_like(logits) * 100
    changed = loss(
        torch.where(ignored, noise, logits),
        [torch.where(ignored, noise, a) for a in aux],
        target,
    )["loss"]
    torch.testing.assert_close(changed, before)
    # ...while a labelled pixel does.
    nudged = logits.clone()
    nudged[1, :, 3, 3] += torch.tensor([5.0, -5.0, 0.0, 0.0])
    assert not torch.isclose(loss(nudged, aux, target)["loss"], before)


def test_class_weights_are_applied(batch) -> None:
    logits, aux, target = batch
    weights = torch.tensor([0.5, 1.0, 2.0, 4.0])
    out = DeepSupervisionLoss(class_weights=weights.tolist())(logits, aux, target)
    torch.testing.assert_close(out["loss_main"], reference_ce(logits, target, weights))
    expected_aux = torch.stack([reference_ce(a, target, weights) for a in aux]).mean()
    torch.testing.assert_close(out["loss_aux"], expected_aux)
    assert not torch.isclose(out["loss_main"], reference_ce(logits, target))


def test_class_weights_from_a_hydra_list(batch) -> None:
    """``loss.class_weights=[...]`` arrives from Hydra as a ListConfig."""
    logits, aux, target = batch
    weights = [0.5, 1.0, 2.0, 4.0]
    from_config = DeepSupervisionLoss(class_weights=OmegaConf.create(weights))
    torch.testing.assert_close(
        from_config(logits, aux, target)["loss"],
        DeepSupervisionLoss(class_weights=weights)(logits, aux, target)["loss"],
    )


def test_loss_is_float32_for_bf16_logits(batch) -> None:
    logits, aux, target = batch
    out = DeepSupervisionLoss()(logits.bfloat16(), [a.bfloat16() for a in aux], target)
    assert out["loss"].dtype == torch.float32


def test_loss_backpropagates_to_logits(batch) -> None:
    logits, aux, target = batch
    logits = logits.clone().requires_grad_(True)
    DeepSupervisionLoss()(logits, aux, target)["loss"].backward()
    ignored = (target == IGNORE)[:, None].expand_as(logits)
    assert (logits.grad[ignored] == 0).all()
    assert logits.grad[~ignored].abs().sum() > 0


def reference_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean over present classes of (2|P∩G| + 1) / (|P| + |G| + 1), the plain way."""
    valid = target != IGNORE
    probs = logits.softmax(1) * valid[:, None]
    onehot = F.one_hot(torch.where(valid, target, 0), C).permute(0, 3, 1, 2) * valid[:, None]
    inter = (probs * onehot).sum((0, 2, 3))
    total = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    present = onehot.sum((0, 2, 3)) > 0
    return 1 - ((2 * inter + 1) / (total + 1))[present].mean()


@pytest.mark.parametrize("scatter", [True, False], ids=["scatter", "one-hot"])
def test_class_overlap_both_ways(batch, scatter: bool) -> None:
    logits, _, target = batch
    target = target.clone()
    target[target == 2] = 0  # class 2 absent
    valid = (target != IGNORE).flatten(1)
    labels = target.flatten(1).masked_fill(~valid, 0)
    probs = logits.softmax(1).flatten(2)
    inter, count = _class_overlap(probs, labels, valid, C, scatter=scatter)
    for c in range(C):
        own = (target == c).flatten(1)
        assert count[c] == own.sum()
        torch.testing.assert_close(inter[c], probs[:, c][own].sum())
    assert count[2] == 0 and inter[2] == 0


def test_dice_matches_the_plain_formula_and_its_gradient(batch) -> None:
    logits, _, target = batch
    target = target.clone()
    target[target == 3] = 1  # an absent class leaves the mean
    mine = logits.clone().requires_grad_(True)
    plain = logits.clone().requires_grad_(True)
    loss = soft_dice_loss(mine, target)
    expected = reference_dice(plain, target)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(mine.grad, plain.grad)
    assert 0 < loss < 1


def test_dice_of_a_perfect_prediction_is_near_zero(batch) -> None:
    _, _, target = batch
    perfect = F.one_hot(torch.where(target == IGNORE, 0, target), C).permute(0, 3, 1, 2) * 50.0
    assert soft_dice_loss(perfect, target) < 1e-3
    assert soft_dice_loss(-perfect, target) > 0.9


def test_dice_with_every_pixel_ignored_is_zero_without_gradient(batch) -> None:
    logits, _, target = batch
    logits = logits.clone().requires_grad_(True)
    loss = soft_dice_loss(logits, torch.full_like(target, IGNORE))
    loss.backward()
    assert loss == 0
    assert (logits.grad == 0).all()


def test_dice_traces_as_one_graph(batch) -> None:
    """No data-dependent branch: a GPU step never waits on the host for it, and
    ``torch.compile`` does not split the training step around the loss."""
    logits, _, target = batch
    traced = torch.compile(soft_dice_loss, fullgraph=True, backend="eager")
    torch.testing.assert_close(traced(logits, target), reference_dice(logits, target))


def test_ce_dice_loss_is_ce_plus_weighted_dice(batch) -> None:
    logits, aux, target = batch
    weights = torch.tensor([0.5, 1.0, 2.0, 4.0])
    loss = DeepSupervisionLoss(dice_weight=0.7, class_weights=weights.tolist())
    out = loss(logits, aux, target)

    def seg(x: torch.Tensor) -> torch.Tensor:
        return reference_ce(x, target, weights) + 0.7 * reference_dice(x, target)

    torch.testing.assert_close(out["loss_main"], seg(logits))
    torch.testing.assert_close(out["loss_aux"], torch.stack([seg(a) for a in aux]).mean())
    bf16 = loss(logits.bfloat16(), [a.bfloat16() for a in aux], target)
    assert bf16["loss"].dtype == torch.float32
    torch.testing.assert_close(bf16["loss"], out["loss"], atol=0.02, rtol=0.02)


# --------------------------------------------------------------------------- scores

# rows = ground truth, columns = prediction
CONFUSION = torch.tensor([[50, 2, 3], [4, 30, 6], [1, 5, 20]])


def test_scores_from_hand_made_confusion() -> None:
    s = scores_from_confusion(CONFUSION)
    # class 0: TP 50, FP 4+1, FN 2+3; class 1: TP 30, FP 2+5, FN 4+6; class 2: TP 20, FP 3+6, FN 1+5
    f1 = [100 / 110, 60 / 77, 40 / 55]
    iou = [50 / 60, 30 / 47, 20 / 35]
    torch.testing.assert_close(s["f1"], torch.tensor(f1, dtype=torch.float64))
    torch.testing.assert_close(s["iou"], torch.tensor(iou, dtype=torch.float64))
    assert s["present"].tolist() == [True, True, True]
    assert s["f1_mean"].item() == pytest.approx((60 / 77 + 40 / 55) / 2)  # background excluded
    assert s["miou"].item() == pytest.approx(sum(iou) / 3)
    assert s["pixel_acc"].item() == pytest.approx(100 / 121)


def test_f1_mean_skips_classes_absent_from_ground_truth() -> None:
    confusion = torch.tensor([
        [10, 0, 0, 2],
        [0, 5, 1, 1],
        [0, 0, 0, 0],  # class 2: absent from the ground truth, predicted once
        [0, 0, 0, 0],  # class 3: absent from the ground truth, predicted 3 times
    ])
    s = scores_from_confusion(confusion)
    assert s["present"].tolist() == [True, True, False, False]
    assert s["f1"][2:].tolist() == [0.0, 0.0] and s["iou"][2:].tolist() == [0.0, 0.0]
    # class 1: TP 5, FP 0, FN 1 + 1; the absent classes' zero F1 is not averaged in.
    assert s["f1_mean"].item() == pytest.approx(2 * 5 / (2 * 5 + 0 + 2))
    assert s["miou"].item() == pytest.approx((10 / 12 + 5 / 7) / 2)
    assert s["pixel_acc"].item() == pytest.approx(15 / 19)


def test_background_choice() -> None:
    s = scores_from_confusion(CONFUSION, background=())
    assert s["f1_mean"].item() == pytest.approx((100 / 110 + 60 / 77 + 40 / 55) / 3)
    s = scores_from_confusion(CONFUSION, background=(0, 2))
    assert s["f1_mean"].item() == pytest.approx(60 / 77)


def test_scores_of_an_empty_matrix_are_nan() -> None:
    s = scores_from_confusion(torch.zeros(3, 3, dtype=torch.long))
    assert math.isnan(s["f1_mean"]) and math.isnan(s["miou"]) and math.isnan(s["pixel_acc"])


def test_perfect_prediction_scores_one() -> None:
    s = scores_from_confusion(torch.diag(torch.tensor([5, 0, 7])))
    assert s["f1_mean"].item() == 1.0 and s["miou"].item() == 1.0 and s["pixel_acc"].item() == 1.0


def _random_labels(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, C, (2, 8, 8), generator=g)
    preds = torch.where(torch.rand(2, 8, 8, generator=g) < 0.7, target,
                        torch.randint(0, C, (2, 8, 8), generator=g))
    target[:, 0] = IGNORE
    return preds, target


def test_segmentation_metrics_accumulate_over_updates() -> None:
    (p1, t1), (p2, t2) = _random_labels(1), _random_labels(2)
    split, whole = SegmentationMetrics(C), SegmentationMetrics(C)
    split.update(p1, t1)
    split.update(p2, t2)
    whole.update(torch.cat([p1, p2]), torch.cat([t1, t2]))
    a, b = split.compute(), whole.compute()
    assert torch.equal(split.confmat, whole.confmat)
    for key in ("f1", "iou", "f1_mean", "miou", "pixel_acc"):
        torch.testing.assert_close(a[key], b[key])


def test_segmentation_metrics_ignore_255_and_count_pixels() -> None:
    preds, target = _random_labels(3)
    metric = SegmentationMetrics(C)
    metric.update(preds, target)
    valid = target != IGNORE
    expected = torch.zeros(C, C, dtype=torch.long)
    for t, p in zip(target[valid].tolist(), preds[valid].tolist(), strict=True):
        expected[t, p] += 1
    assert torch.equal(metric.confmat.long(), expected)
    assert metric.confmat.sum() == valid.sum()
    # Whatever is predicted at ignored pixels changes nothing.
    metric2 = SegmentationMetrics(C)
    metric2.update(torch.where(valid, preds, (preds + 1) % C), target)
    assert torch.equal(metric2.confmat, metric.confmat)
    metric.reset()
    assert metric.confmat.sum() == 0


# --------------------------------------------------------------------------- schedule


def lr_trace(steps: int, **kwargs) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = cosine_with_warmup(optimizer, **kwargs)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_cosine_with_warmup_shape() -> None:
    lrs = lr_trace(31, total_steps=25, warmup_fraction=0.2, min_lr_ratio=0.1)
    # Linear warm-up over the first 5 steps up to the base lr.
    assert lrs[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])
    assert lrs[5] == pytest.approx(0.1)
    assert max(lrs) == pytest.approx(0.1)
    # Cosine decay: halfway between base and floor at the middle, monotone, floor at the end.
    assert lrs[15] == pytest.approx(0.1 * (0.1 + 0.9 * 0.5))
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:], strict=False))
    assert lrs[25] == pytest.approx(0.01)
    assert lrs[30] == pytest.approx(0.01)  # stays at the floor past total_steps


def test_cosine_without_warmup_starts_at_base_and_decays_to_zero() -> None:
    lrs = lr_trace(11, total_steps=10)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[5] == pytest.approx(0.05)
    assert lrs[10] == pytest.approx(0.0)


# --------------------------------------------------------------------------- on label maps

# Small label maps whose scores are computed by hand below. Class 2 is in the ground truth
# but never predicted, class 3 is predicted once but absent from the ground truth, and one
# pixel is ignored.
TARGET = torch.tensor([[[0, 0, 1, 1], [2, 2, IGNORE, 0]]])
PREDS = torch.tensor([[[0, 1, 1, 1], [3, 0, 0, 0]]])
# 7 counted pixels; confusion (rows = truth): [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 1], 0s]
# F1: class 0 = 2*2/(3+3), class 1 = 2*2/(2+3), class 2 = 0; class 3 is left out (absent).
HAND = {
    "f1_mean": (4 / 5 + 0) / 2,  # foreground classes present in the truth: 1 and 2
    "miou": (2 / 4 + 2 / 3 + 0) / 3,  # every class present in the truth: 0, 1 and 2
    "pixel_acc": 4 / 7,
}


def test_segmentation_metrics_on_label_maps_match_a_hand_computation() -> None:
    metric = SegmentationMetrics(C)
    metric.update(PREDS, TARGET)
    scores = metric.compute()
    for key, value in HAND.items():
        assert scores[key].item() == pytest.approx(value), key
    expected_f1 = torch.tensor([4 / 6, 4 / 5, 0, 0], dtype=torch.float64)
    torch.testing.assert_close(scores["f1"], expected_f1)
    assert scores["present"].tolist() == [True, True, True, False]


class OneHotNet(torch.nn.Module):
    """Logits that predict exactly the label map carried in the image's first channel."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.one_hot(x[:, 0].long(), C).permute(0, 3, 1, 2).float() * self.scale


def test_logged_validation_scores_match_a_hand_computation() -> None:
    """What the module logs (and checkpoints are chosen by) is the papers' protocol."""
    import lightning as L
    from torch.utils.data import DataLoader

    from faceparse.training import FaceParsingModule

    module = FaceParsingModule(OneHotNet(), torch.optim.SGD, DeepSupervisionLoss(),
                               labels="ourface")
    module.metrics["val"] = SegmentationMetrics(C)  # the 4 hand-made classes
    module.scheme = type(module.scheme)("four", ("background", "a", "b", "c"))
    batch = {"image": PREDS[:, None].float().expand(1, 3, 2, 4), "mask": TARGET}
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.validate(module, DataLoader([batch], batch_size=None), verbose=False)
    logged = trainer.callback_metrics
    for key, value in HAND.items():
        assert logged[f"val/{key}"].item() == pytest.approx(value), key
    assert logged["val/f1/a"].item() == pytest.approx(4 / 5)
    assert "val/f1/c" not in logged  # absent from the ground truth: not logged, not averaged
