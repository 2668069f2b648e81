"""Face-parsing metrics from one confusion matrix accumulated over the whole split.

Per-class F1 (Dice) and IoU are computed from summed counts, not averaged per image
(the papers' protocol), and the summed matrix is what DDP reduces. The headline mean
F1 covers foreground classes *present in the ground truth*, so a class a dataset never
labels (beard in CelebAMask-HQ) does not drag the mean down.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from faceparse.labels import IGNORE_INDEX

__all__ = ["HEADLINE", "SegmentationMetrics", "metric_mode", "scores_from_confusion"]

# The figures papers report: mean F1 over foreground classes present, mIoU, pixel accuracy.
HEADLINE = ("f1_mean", "miou", "pixel_acc")


def metric_mode(name: str, wording: str = "lightning") -> str:
    """Which way ``name`` improves: ``min`` for a loss (``val/loss``), ``max`` for every
    score; ``wording="optuna"`` says ``minimize``/``maximize``. The checkpoint callback,
    the sweeper and the report all ask here, so a loss is never kept at its worst."""
    lower = str(name).rsplit("/", 1)[-1] == "loss"
    if wording == "optuna":
        return "minimize" if lower else "maximize"
    return "min" if lower else "max"


def scores_from_confusion(
    confusion: torch.Tensor, background: Sequence[int] = (0,)
) -> dict[str, torch.Tensor]:
    """Per-class and headline scores from a (C, C) matrix with rows = ground truth."""
    confusion = confusion.double()
    tp = confusion.diag()
    gt = confusion.sum(1)
    pred = confusion.sum(0)
    f1 = torch.where(gt + pred > 0, 2 * tp / (gt + pred).clamp(min=1), torch.zeros_like(tp))
    union = gt + pred - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.zeros_like(tp))
    present = gt > 0
    foreground = present.clone()
    foreground[list(background)] = False
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    return {
        "f1": f1,
        "iou": iou,
        "present": present,
        "f1_mean": f1[foreground].mean() if foreground.any() else nan,
        "miou": iou[present].mean() if present.any() else nan,
        "pixel_acc": tp.sum() / gt.sum() if gt.sum() > 0 else nan,
    }


class SegmentationMetrics(MulticlassConfusionMatrix):
    """A torchmetrics confusion matrix whose ``compute`` returns the face-parsing scores."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__(num_classes=num_classes, ignore_index=ignore_index, validate_args=False)

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return scores_from_confusion(self.confmat)
