"""Class frequencies of a dataset split, and loss weights derived from them
(``python -m faceparse.stats`` prints them).

Weights are median-frequency balancing (Eigen & Fergus, 2015),
``w_c = (median_f / f_c) ** power``: ``power=1`` is the original, ``0.5`` a milder
form that does not blow up tiny classes. A class with no counted pixel has no frequency;
for training (:func:`training_weights`) it gets the largest weight of a counted class, not
0: it may be merely missing from a subsample, and a CE weight of 0 would never learn it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from rich.table import Table
from torch.utils.data import DataLoader, Dataset

from faceparse.data.io import BadSampleError
from faceparse.labels import IGNORE_INDEX, LabelScheme

__all__ = ["Counted", "sample_indices", "class_counts", "count_classes", "class_weights",
           "training_weights",
           "weights_override", "unseen_note", "render_table", "unseen_footnote"]


log = logging.getLogger(__name__)


class _MaskHistograms(Dataset):
    """Per-sample label histograms, so loader workers do the counting too.

    Each sample is read once (``load_checked``): a bad one counts for nothing, where the
    training ``__getitem__`` would count its next good neighbour twice. Under ``strict`` its
    error is returned and raised in the main process (:func:`count_classes`): a loader
    worker's would arrive wrapped in the worker's traceback.
    """

    def __init__(self, dataset: Dataset, indices: np.ndarray) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def _mask(self, index: int) -> np.ndarray:
        if not hasattr(self.dataset, "load_checked"):  # a plain dataset: its items' masks
            return np.asarray(self.dataset[index]["mask"])
        _, native = self.dataset.load_checked(index)
        return self.dataset.lut[native]

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = int(self.indices[i])
        try:
            mask = self._mask(index)
        except BadSampleError as err:
            if getattr(self.dataset, "strict", False):
                return {"counts": torch.zeros(256, dtype=torch.int64), "error": str(err)}
            log.warning("skipping a bad sample (data.dataset.strict=true stops): %s", err)
            return {"counts": torch.zeros(256, dtype=torch.int64), "skipped": 1}
        counts = np.bincount(mask.ravel(), minlength=256).astype(np.int64)
        return {"counts": torch.from_numpy(counts), "skipped": 0}


@dataclass(frozen=True)
class Counted:
    """Labelled pixels per class, and how many samples were skipped as bad (not counted)."""

    counts: np.ndarray
    skipped: int


def sample_indices(n: int, max_samples: int | None = None) -> np.ndarray:
    """The samples counted: all ``n``, or ``max_samples`` evenly spaced ones."""
    return np.arange(n) if not max_samples or max_samples >= n else np.unique(
        np.linspace(0, n - 1, max_samples).round().astype(int))


def count_classes(dataset: Dataset, num_classes: int, max_samples: int | None = None,
                  workers: int = 0) -> Counted:
    """Labelled pixels per class (ignore excluded) over the split, or an even subsample,
    each readable sample counted once; a bad one is skipped (``strict``: its error)."""
    indices = sample_indices(len(dataset), max_samples)
    loader = DataLoader(_MaskHistograms(dataset, indices), batch_size=None, num_workers=workers)
    total, skipped = torch.zeros(256, dtype=torch.int64), 0
    for item in loader:
        if "error" in item:
            raise BadSampleError(item["error"])
        total += item["counts"]
        skipped += int(item["skipped"])
    counts = total.numpy()
    assert counts[num_classes:IGNORE_INDEX].sum() == 0, "label ids outside the scheme"
    return Counted(counts[:num_classes], skipped)


def class_counts(dataset: Dataset, num_classes: int, max_samples: int | None = None,
                 workers: int = 0) -> np.ndarray:
    """:func:`count_classes`' pixel counts alone."""
    return count_classes(dataset, num_classes, max_samples, workers).counts


def class_weights(counts: np.ndarray, power: float = 0.5) -> np.ndarray:
    """Median-frequency balancing weights; 0 for classes with no pixels (no frequency)."""
    counts = np.asarray(counts, dtype=np.float64)
    labelled = counts > 0
    weights = np.zeros_like(counts)
    if labelled.any():
        freq = counts[labelled] / counts.sum()
        weights[labelled] = (np.median(freq) / freq) ** power
    return weights


def training_weights(counts: np.ndarray, power: float = 0.5) -> np.ndarray:
    """:func:`class_weights` to train with: a class with no counted pixel weighs as much as
    the rarest counted one (the largest weight), so it is still learned where it appears."""
    weights = class_weights(counts, power)
    unseen = np.asarray(counts) == 0
    if unseen.any() and not unseen.all():
        weights[unseen] = weights[~unseen].max()
    return weights


def weights_override(weights: np.ndarray) -> str:
    """The command-line override that trains with these weights."""
    return "loss.class_weights=[" + ",".join(f"{w:.4g}" for w in weights) + "]"


def unseen_note(counted: int, subsampled: bool) -> str:
    """Why a class has no pixels: missing from a subsample is not never labelled."""
    return f"not in the {counted} samples counted" if subsampled else "never labelled"


def render_table(scheme: LabelScheme, counts: np.ndarray, weights: np.ndarray,
                 title: str) -> Table:
    """Pixels, share and weight per class; a class with no counted pixel is starred
    (:func:`unseen_footnote` says why)."""
    table = Table(title=title)
    for column in ("id", "class", "pixels", "share %", "weight"):
        table.add_column(column, justify="left" if column == "class" else "right")
    total = max(int(counts.sum()), 1)
    for i, name in enumerate(scheme.class_names):
        table.add_row(str(i), name, f"{int(counts[i]):,}", f"{100 * counts[i] / total:.3f}",
                      f"{weights[i]:.4g}" + ("" if counts[i] else " *"))
    return table


def unseen_footnote(scheme: LabelScheme, counts: np.ndarray, weights: np.ndarray,
                    note: str) -> str | None:
    """The line under the table that names the starred classes and their weight."""
    unseen = [n for n, c in zip(scheme.class_names, counts, strict=True) if not c]
    if not unseen:
        return None
    return (f"* {', '.join(unseen)}: {note}; weighted {weights[counts == 0].max():.4g}, the "
            f"largest weight of a counted class")
