"""faceparse.evaluation: every score against a hand computation, TTA, the report files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from faceparse.checkpoints.locate import LocatedCheckpoint
from faceparse.data.io import BadSampleError
from faceparse.data.readers.base import FaceParsingDataset
from faceparse.data.synthetic import SyntheticFaces
from faceparse.eval import data_to_score, raw_files_unless, scoring_scheme
from faceparse.evaluation import MultiPassTTA, Protocol, score_split, write_report
from faceparse.evaluation.samples import EvalSamples, collate_samples
from faceparse.labels import LAPA, LabelScheme, get_scheme, mapping_lut

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# background, a, b, c (absent from the truth and never predicted), d (never predicted)
FIVE = LabelScheme("five", ("background", "a", "b", "c", "d"))
TRUTH = np.array([[0, 0, 1, 1],
                  [2, 2, 255, 4]], dtype=np.uint8)
PRED = np.array([[0, 1, 1, 1],
                 [1, 2, 3, 0]], dtype=np.uint8)  # the 3 falls on an ignored pixel


class FixedPrediction(nn.Module):
    """Logits whose argmax is ``PRED`` for every image, whatever the input."""

    def __init__(self, pred: np.ndarray, num_classes: int) -> None:
        super().__init__()
        onehot = nn.functional.one_hot(torch.from_numpy(pred).long(), num_classes)
        self.register_buffer("logits", onehot.permute(2, 0, 1).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1, -1, -1)


class TwoSamples(FaceParsingDataset):
    """Sample 0 is TRUTH; sample 1 is a bad download."""

    native_scheme = FIVE

    def __len__(self) -> int:
        return 2

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index == 1:
            raise BadSampleError("image is 4x2 but its mask is 9x9: broken.png")
        return np.zeros((2, 4, 3), np.uint8), TRUTH.copy()

    def describe(self, index: int) -> str:
        return f"sample{index}.png"


def _score(tmp_path: Path) -> dict:
    samples = EvalSamples(TwoSamples(FIVE), image_size=4, original=True)
    loader = DataLoader(samples, batch_size=2, collate_fn=collate_samples)
    result = score_split(FixedPrediction(PRED, 5), loader, FIVE, mapping_lut(FIVE, FIVE), 5,
                         MultiPassTTA(), torch.device("cpu"), worst=2)
    protocol = Protocol("m.ckpt", "ab" * 32, "five", "TwoSamples", "five", "five", "files",
                        "test",
                        result.samples, result.skipped, "original", 4,
                        background=["background"], averaged=["a", "b", "d"])
    return write_report(tmp_path, result, FIVE, protocol)


def test_scores_match_a_hand_computation(tmp_path: Path) -> None:
    # counted pixels (truth, prediction): (0,0) (0,1) (1,1) (1,1) (2,1) (2,2) (4,0)
    report = _score(tmp_path)
    per_class = report["per_class"]
    assert [per_class[n]["gt_pixels"] for n in FIVE.class_names] == [2, 2, 2, 0, 1]
    # F1 = 2 tp / (truth + predicted): 2/4, 4/6, 2/3, none (nothing either side), 0/1
    scored = [n for n in FIVE.class_names if n != "c"]
    assert [per_class[n]["f1"] for n in scored] == pytest.approx([0.5, 2 / 3, 2 / 3, 0.0])
    # IoU = tp / (truth + predicted - tp): 1/3, 2/4, 1/2, none, 0/1
    assert [per_class[n]["iou"] for n in scored] == pytest.approx([1 / 3, 0.5, 0.5, 0.0])
    assert per_class["c"]["f1"] is None and per_class["c"]["iou"] is None
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert next(r for r in rows if r.startswith("c,")) == "c,,,False,0,"
    assert [per_class[n]["present"] for n in FIVE.class_names] == [True] * 3 + [False, True]
    assert report["f1_mean"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)  # a, b, d; not c
    assert report["miou"] == pytest.approx((1 / 3 + 0.5 + 0.5 + 0) / 4)  # all present
    assert report["pixel_acc"] == pytest.approx(4 / 7)  # the 255 pixel is not counted
    assert report["confusion"][0] == [1, 1, 0, 0, 0] and report["confusion"][4][0] == 1


def test_the_report_states_its_protocol_and_names_skipped_samples(tmp_path: Path) -> None:
    report = _score(tmp_path)
    protocol = report["protocol"]
    assert protocol["samples"] == 1 and protocol["skipped"] == ["sample1.png"]
    assert "1 images" in protocol["text"] and "1 bad samples skipped" in protocol["text"]
    assert "each mask's own resolution" in protocol["text"] and "a, b, d" in protocol["text"]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["f1_mean"] == pytest.approx(report["f1_mean"])
    with (tmp_path / "metrics.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == ["class", "f1", "iou", "present", "gt_pixels", "pixel_acc"]
    rows = {row["class"]: row for row in table}
    assert float(rows["background"]["f1"]) == pytest.approx(0.5)
    assert rows["background"]["pixel_acc"] == "" and rows["d"]["gt_pixels"] == "1"
    # each headline score in the column of its kind, the others empty
    assert float(rows["f1_mean"]["f1"]) == pytest.approx(report["f1_mean"])
    assert float(rows["miou"]["iou"]) == pytest.approx(report["miou"])
    assert float(rows["pixel_acc"]["pixel_acc"]) == pytest.approx(4 / 7)
    assert rows["miou"]["f1"] == rows["pixel_acc"]["f1"] == rows["f1_mean"]["iou"] == ""
    assert Image.open(tmp_path / "confusion.png").size[0] > 200
    grid = np.asarray(Image.open(tmp_path / "worst_images.png"))
    # photo | truth | prediction at the 4 px input, enlarged 32x to 128 px
    assert grid.shape == (128, 128 * 3 + 8, 3)
    truth_tile = grid[:, 132:260]
    assert (truth_tile[:64, :64] == FIVE.palette[0]).all()  # TRUTH[0, :2] is background
    assert (truth_tile[64:, :64] == FIVE.palette[2]).all()  # TRUTH[1, :2] is class b
    assert (tmp_path / "protocol.txt").read_text().startswith("1 images of the TwoSamples")


def test_a_report_without_worst_images_removes_an_earlier_grid(tmp_path: Path) -> None:
    """``out=`` reused with ``worst=0``: the earlier grid showed another model's predictions."""
    _score(tmp_path)
    assert (tmp_path / "worst_images.png").is_file()
    samples = EvalSamples(TwoSamples(FIVE), image_size=4, original=True)
    loader = DataLoader(samples, batch_size=2, collate_fn=collate_samples)
    result = score_split(FixedPrediction(PRED, 5), loader, FIVE, mapping_lut(FIVE, FIVE), 5,
                         MultiPassTTA(), torch.device("cpu"), worst=0)
    protocol = Protocol("m.ckpt", "ab" * 32, "five", "TwoSamples", "five", "five", "files",
                        "test", result.samples, result.skipped, "original", 4)
    write_report(tmp_path, result, FIVE, protocol)
    assert not (tmp_path / "worst_images.png").exists()
    assert (tmp_path / "metrics.json").is_file()


def test_predictions_are_mapped_into_the_scoring_scheme(tmp_path: Path) -> None:
    """A FaceSynthetics model's left eye is an 'eyes' pixel in ourface."""
    fs, ours = get_scheme("facesynthetics"), get_scheme("ourface")
    pred = np.full((2, 2), fs.index("left_eye"), np.uint8)
    batch = [{"image": torch.zeros(3, 2, 2), "name": "x",
              "mask": torch.full((2, 2), ours.index("eyes"), dtype=torch.uint8)}]
    loader = DataLoader(batch, batch_size=1, collate_fn=collate_samples)
    result = score_split(FixedPrediction(pred, fs.num_classes), loader, fs,
                         mapping_lut(fs, ours), ours.num_classes, MultiPassTTA(),
                         torch.device("cpu"), worst=0)
    assert float(result.scores["pixel_acc"]) == 1.0 and result.worst == []


def test_a_class_mismatch_is_refused_unless_a_scoring_scheme_is_named() -> None:
    with pytest.raises(ValueError, match="predicts 11 'ourface' classes but data.labels="
                                         "celebamask has 19"):
        scoring_scheme(get_scheme("ourface"), "celebamask", None)
    assert scoring_scheme(get_scheme("ourface"), "celebamask", "ourface").name == "ourface"


def test_original_resolution_keeps_the_mask_size() -> None:
    reader = SyntheticFaces("test", sizes={"test": 1}, render_size=48)
    item = EvalSamples(reader, image_size=32, original=True)[0]
    assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (48, 48)
    resized = EvalSamples(reader, image_size=32, original=False)[0]
    assert resized["mask"].shape == (32, 32)


class MirrorSymmetric(nn.Module):
    """A net with f(flip x) == swap(flip f(x)): left/right channels follow the image side."""

    def __init__(self, scheme: LabelScheme) -> None:
        super().__init__()
        self.scheme = scheme

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1]
        ramp = torch.linspace(0, 1, w)
        smooth = nn.functional.avg_pool2d(x, 3, 1, 1)  # a symmetric kernel: flip-equivariant
        channels = [smooth[:, c % 3] * (c + 1) for c in range(self.scheme.num_classes)]
        for left, right in self.scheme.flip_pairs:
            side = smooth[:, 0] * 3
            channels[left] = channels[left] + side * ramp
            channels[right] = channels[left] - side * ramp + side * ramp.flip(0)
        return torch.stack(channels, 1)


def test_flip_tta_of_a_mirror_symmetric_model_equals_no_tta() -> None:
    torch.manual_seed(0)
    net, x = MirrorSymmetric(LAPA), torch.randn(2, 3, 16, 32)
    plain = MultiPassTTA()(net, x, LAPA)
    flipped = MultiPassTTA(flip=True)(net, x, LAPA)
    torch.testing.assert_close(flipped, plain)
    # without the class swap the mirrored pass would disagree: the test can fail
    assert not torch.allclose(net(x.flip(-1)).flip(-1), plain, atol=1e-3)


def test_flip_tta_averages_the_plain_and_the_mirrored_swapped_pass() -> None:
    """With a net that is not mirror symmetric, flip TTA is the hand average of its plain
    pass and its mirrored pass, mirrored back with left/right swapped (a TTA that ran the
    plain pass twice would equal the plain pass)."""
    torch.manual_seed(0)
    net = nn.Conv2d(3, LAPA.num_classes, 3, padding=1).eval()
    x = torch.randn(2, 3, 16, 32)
    swap = torch.as_tensor(LAPA.flip_lut()[: LAPA.num_classes].astype("int64"))
    with torch.no_grad():
        expected = (net(x) + net(x.flip(-1)).flip(-1)[:, swap]) / 2
        flipped = MultiPassTTA(flip=True)(net, x, LAPA)
        plain = MultiPassTTA()(net, x, LAPA)
    torch.testing.assert_close(flipped, expected)
    assert not torch.allclose(flipped, plain, atol=1e-3)


def test_multi_scale_tta_averages_passes_at_the_input_size() -> None:
    tta = MultiPassTTA(scales=(0.5, 1.0, 1.3), size_multiple=16)
    assert [tta._scaled_side(48, s) for s in tta.scales] == [32, 48, 64]
    seen = []

    def net(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape[-2:]))
        return torch.full((x.shape[0], 2, *x.shape[-2:]), float(len(seen)))

    out = tta(net, torch.zeros(1, 3, 48, 48), LabelScheme("two", ("background", "x")))
    assert seen == [(32, 32), (48, 48), (64, 64)] and out.shape == (1, 2, 48, 48)
    torch.testing.assert_close(out, torch.full_like(out, 2.0))  # (1 + 2 + 3) / 3
    with pytest.raises(ValueError, match="positive"):
        MultiPassTTA(scales=(0.0,))


@pytest.mark.parametrize(("args", "overrides"), [
    (("data=celebamask", "resolution=original", "use_prepared=true"), {"prepared_dir": None}),
    (("data=celebamask",), {"prepared_dir": None}),  # published scores read the originals
    (("data=celebamask", "use_prepared=true"), {}),
    ((), {}),  # synthetic faces have no prepared copy
])
def test_scoring_reads_original_files_unless_told(compose, args, overrides) -> None:
    assert raw_files_unless(compose(["ckpt=x.ckpt", *args], config="eval")) == overrides


def test_a_run_is_scored_on_its_own_data_unless_the_command_line_sets_data(
        compose, tmp_path: Path) -> None:
    """eval's default data (synthetic faces at 256 px) is another test set than a run's
    (the quickstart renders at 64 px; a folder's fractions decide which images are test).
    ``data.root=`` alone, to find the run's data on this machine, keeps the run's data."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "epoch_000.ckpt").write_bytes(b"")
    trained = compose(["data.image_size=64"]).data
    (run / "config_resolved.yaml").write_text(OmegaConf.to_yaml({"data": trained}))
    cfg = compose(["ckpt=x"], config="eval")
    for located in (LocatedCheckpoint(run / "checkpoints" / "epoch_000.ckpt", run),
                    LocatedCheckpoint(run / "checkpoints" / "epoch_000.ckpt")):
        data, source = data_to_score(cfg, located, ["ckpt"])
        assert data.dataset.render_size == 64 and source.describe().endswith("config_resolved.yaml")
    # a key typed changes the run's data (data.root where it lives here), not eval's default
    cfg.data.root = "/data/here"
    data, source = data_to_score(cfg, LocatedCheckpoint(run / "checkpoints" / "epoch_000.ckpt"),
                                 ["ckpt", "data.root"])
    assert data.dataset.render_size == 64 and data.root == "/data/here"
    assert source.describe().endswith(
        "config_resolved.yaml, with data.root from the command line")
    data, source = data_to_score(cfg, LocatedCheckpoint(run / "checkpoints" / "epoch_000.ckpt"),
                                 ["ckpt", "data"])  # data=<dataset>: another test set
    assert data.dataset.render_size == 256 and source.describe() == "the command line"
    alone = tmp_path / "tiny.ckpt"
    data, source = data_to_score(cfg, LocatedCheckpoint(alone), ["ckpt"])
    assert data.dataset.render_size == 256 and source.describe() == "eval's defaults"
    cfg.run_data = False
    assert data_to_score(cfg, LocatedCheckpoint(run / "checkpoints" / "epoch_000.ckpt", run),
                         ["ckpt"])[1].describe() == "eval's defaults"


class VaryingTruth(FaceParsingDataset):
    """Sample k: PRED with its first k pixels relabelled, so its image F1 falls with k."""

    native_scheme = FIVE

    def __init__(self, errors: list[int], scale: int = 1) -> None:
        super().__init__(FIVE)
        self.errors, self.scale = errors, scale

    def __len__(self) -> int:
        return len(self.errors)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        truth = PRED.copy().reshape(-1)
        truth[: self.errors[index]] = 4
        truth = truth.reshape(PRED.shape).repeat(self.scale, 0).repeat(self.scale, 1)
        return np.zeros((*truth.shape, 3), np.uint8), truth

    def describe(self, index: int) -> str:
        return f"k{self.errors[index]}.png"


def test_the_worst_images_are_the_lowest_scoring_ones_in_order() -> None:
    """More images than ``worst``: the grid keeps the two worst, worst first (a grid of the
    first images would pass with fewer images than ``worst``)."""
    def scored(errors: list[int], worst: int) -> list:
        samples = EvalSamples(VaryingTruth(errors), image_size=4, original=True)
        loader = DataLoader(samples, batch_size=2, collate_fn=collate_samples)
        return score_split(FixedPrediction(PRED, 5), loader, FIVE, mapping_lut(FIVE, FIVE),
                           5, MultiPassTTA(), torch.device("cpu"), worst=worst).worst

    errors = [0, 3, 1, 5, 2]
    alone = {f"k{k}.png": scored([k], 1)[0].f1 for k in errors}  # each image's own F1
    assert len(set(alone.values())) >= 3  # the images do differ
    expected = sorted(alone, key=alone.get)[:2]
    assert [w.name for w in scored(errors, 2)] == expected
    assert [w.f1 for w in scored(errors, 2)] == [alone[n] for n in expected]


def test_original_resolution_scores_bilinear_logits_at_the_mask_size() -> None:
    """Masks twice the net's output: the logits are resized bilinearly, then scored (the
    protocol the report states), checked against a hand resize."""
    samples = EvalSamples(VaryingTruth([2], scale=2), image_size=4, original=True)
    loader = DataLoader(samples, batch_size=1, collate_fn=collate_samples)
    net = FixedPrediction(PRED, 5)
    result = score_split(net, loader, FIVE, mapping_lut(FIVE, FIVE), 5, MultiPassTTA(),
                         torch.device("cpu"), worst=0)
    truth = torch.from_numpy(VaryingTruth([2], scale=2).load(0)[1]).long()
    logits = nn.functional.interpolate(net.logits[None], size=tuple(truth.shape),
                                       mode="bilinear", align_corners=False)
    pred = logits[0].argmax(0)
    expected = torch.zeros(5, 5, dtype=torch.long)
    for t, p in zip(truth.reshape(-1).tolist(), pred.reshape(-1).tolist(), strict=True):
        if t != 255:
            expected[t, p] += 1
    torch.testing.assert_close(result.confusion.long(), expected)
