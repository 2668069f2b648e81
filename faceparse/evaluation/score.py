"""Score a split: one confusion matrix over every pixel, plus each image's own score.

The split's score is the papers' one (summed counts, :mod:`faceparse.metrics`); the
per-image mean F1 only ranks images for the worst-images grid.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch import nn
from torch.utils.data import DataLoader

from faceparse.data.transforms import denormalize
from faceparse.evaluation.samples import raise_strict_error
from faceparse.evaluation.tta import MultiPassTTA
from faceparse.fast_path import cuda_bf16
from faceparse.labels import LabelScheme
from faceparse.metrics import SegmentationMetrics, scores_from_confusion

__all__ = ["EvalResult", "WorstImage", "image_f1", "score_split", "scores_in_bf16"]


@dataclass(order=True)
class WorstImage:
    """One image for the grid: photo (H, W, 3) uint8, truth and prediction (H, W) uint8."""

    f1: float
    name: str = field(compare=False)
    photo: np.ndarray = field(compare=False, repr=False)
    truth: np.ndarray = field(compare=False, repr=False)
    prediction: np.ndarray = field(compare=False, repr=False)


@dataclass
class EvalResult:
    """The split's confusion matrix and scores, the worst images, the skipped samples."""

    confusion: torch.Tensor
    scores: dict[str, torch.Tensor]
    samples: int
    skipped: list[str]
    worst: list[WorstImage]


def image_f1(confusion: torch.Tensor, background: int = 0) -> float:
    """One image's mean F1 over foreground classes in its truth (1.0 when none)."""
    value = scores_from_confusion(confusion, (background,))["f1_mean"]
    return 1.0 if torch.isnan(value) else float(value)


def _resize_nearest(labels: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    if tuple(labels.shape) == size:
        return labels.numpy().astype(np.uint8)
    out = F.interpolate(labels[None, None].float(), size=size, mode="nearest")[0, 0]
    return out.numpy().astype(np.uint8)


def scores_in_bf16(device: torch.device) -> bool:
    """Eval runs in bf16 autocast on a GPU that computes bf16 natively, in fp32 elsewhere:
    a CPU's choice rests on a timing probe, and scores must not change with its load."""
    return device.type == "cuda" and cuda_bf16()


def score_split(
    net: nn.Module,
    loader: DataLoader,
    model_scheme: LabelScheme,
    to_scored: np.ndarray,
    num_scored: int,
    tta: MultiPassTTA,
    device: torch.device,
    worst: int = 8,
) -> EvalResult:
    """Run ``net`` over ``loader`` (batches from :func:`collate_samples`) and score it.

    ``to_scored`` is the (256,) lookup from the model's ids to the scoring scheme's.
    """
    metrics = SegmentationMetrics(num_scored)
    lut = torch.as_tensor(to_scored.astype(np.int64))
    heap: list[WorstImage] = []
    skipped: list[str] = []
    samples = 0
    bf16 = scores_in_bf16(device)
    with Progress(transient=True) as progress, torch.inference_mode(), \
            torch.autocast(device.type, torch.bfloat16, enabled=bf16):
        task = progress.add_task("evaluating", total=len(loader.dataset))
        for batch in loader:
            raise_strict_error(batch)
            skipped += batch["bad"]
            if batch["image"] is not None:
                images = batch["image"].to(device, non_blocking=True)
                logits = tta(net, images, model_scheme)
                photos = denormalize(batch["image"].float().numpy()) if worst else None
                for i, (truth, name) in enumerate(zip(batch["mask"], batch["name"],
                                                      strict=True)):
                    one = logits[i : i + 1]
                    if tuple(one.shape[-2:]) != tuple(truth.shape):
                        one = F.interpolate(one, size=tuple(truth.shape), mode="bilinear",
                                            align_corners=False)
                    pred = lut[one[0].argmax(0).cpu()]
                    truth = truth.long()
                    before = metrics.confmat.clone()
                    metrics.update(pred, truth)
                    samples += 1
                    if worst:
                        f1 = image_f1(metrics.confmat - before)
                        size = photos.shape[1:3]
                        item = WorstImage(-f1, name, photos[i], _resize_nearest(truth, size),
                                          _resize_nearest(pred, size))
                        (heapq.heappush if len(heap) < worst else heapq.heappushpop)(heap, item)
            progress.advance(task, len(batch["name"]) + len(batch["bad"]))
    ranked = sorted(heap, reverse=True)
    for item in ranked:
        item.f1 = -item.f1
    confusion = metrics.confmat.clone()
    return EvalResult(confusion, scores_from_confusion(confusion), samples, skipped, ranked)
