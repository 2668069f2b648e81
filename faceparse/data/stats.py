"""Class frequencies of a dataset split, and loss weights derived from them
(``python -m faceparse.stats`` prints them).

Weights are median-frequency balancing (Eigen & Fergus, 2015),
``w_c = (median_f / f_c) ** power``: ``power=1`` is the original, ``0.5`` a milder
form that does not blow up tiny classes; classes the data never labels get 0.
"""

from __future__ import annotations

import numpy as np
import torch
from rich.table import Table
from torch.utils.data import DataLoader, Dataset

from faceparse.labels import IGNORE_INDEX, LabelScheme

__all__ = ["class_counts", "class_weights", "weights_override", "render_table"]


class _MaskHistograms(Dataset):
    """Per-sample label histograms, so loader workers do the counting too."""

    def __init__(self, dataset: Dataset, indices: np.ndarray) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        mask = np.asarray(self.dataset[int(self.indices[i])]["mask"])
        return torch.from_numpy(np.bincount(mask.ravel(), minlength=256).astype(np.int64))


def class_counts(dataset: Dataset, num_classes: int, max_samples: int | None = None,
                 workers: int = 0) -> np.ndarray:
    """Labelled pixels per class (ignore excluded) over the split, or an even subsample."""
    n = len(dataset)
    indices = np.arange(n) if not max_samples or max_samples >= n else np.unique(
        np.linspace(0, n - 1, max_samples).round().astype(int))
    loader = DataLoader(_MaskHistograms(dataset, indices), batch_size=None, num_workers=workers)
    total = sum(loader, torch.zeros(256, dtype=torch.int64)).numpy()
    assert total[num_classes:IGNORE_INDEX].sum() == 0, "label ids outside the scheme"
    return total[:num_classes]


def class_weights(counts: np.ndarray, power: float = 0.5) -> np.ndarray:
    """Median-frequency balancing weights; 0 for classes with no pixels."""
    counts = np.asarray(counts, dtype=np.float64)
    labelled = counts > 0
    weights = np.zeros_like(counts)
    if labelled.any():
        freq = counts[labelled] / counts.sum()
        weights[labelled] = (np.median(freq) / freq) ** power
    return weights


def weights_override(weights: np.ndarray) -> str:
    """The command-line override that trains with these weights."""
    return "loss.class_weights=[" + ",".join(f"{w:.4g}" for w in weights) + "]"


def render_table(scheme: LabelScheme, counts: np.ndarray, weights: np.ndarray,
                 title: str) -> Table:
    table = Table(title=title)
    for column in ("id", "class", "pixels", "share %", "weight"):
        table.add_column(column, justify="left" if column == "class" else "right")
    total = max(int(counts.sum()), 1)
    for i, name in enumerate(scheme.class_names):
        table.add_row(str(i), name, f"{int(counts[i]):,}", f"{100 * counts[i] / total:.3f}",
                      f"{weights[i]:.4g}" if counts[i] else "never labelled")
    return table
