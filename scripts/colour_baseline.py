"""Score a colour-only pixel classifier on the synthetic faces (low is good: shape is needed).

    python scripts/colour_baseline.py --count 200 --val-count 50 --size 96 --seed 0

If a lookup from quantised RGB to the majority label scored well, a network could learn
the synthetic data without learning faces. The generator is tuned so this stays poor.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from faceparse.data.synthetic import render_face
from faceparse.labels import FACESYNTHETICS, OURFACE, mapping_lut
from faceparse.metrics import SegmentationMetrics

_LEVELS = 16  # quantisation levels per RGB channel


def _pixels(seed: int, start: int, count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Colour-bin index and ``ourface`` label of every pixel of faces ``start..start+count``."""
    lut = mapping_lut(FACESYNTHETICS, OURFACE)
    bins, labels = [], []
    for i in range(start, start + count):
        image, mask = render_face(seed, i, size)
        q = image.reshape(-1, 3).astype(np.int64) * _LEVELS // 256
        bins.append((q[:, 0] * _LEVELS + q[:, 1]) * _LEVELS + q[:, 2])
        labels.append(lut[mask].reshape(-1))
    return np.concatenate(bins), np.concatenate(labels).astype(np.int64)


def colour_classifier_scores(
    train_count: int, val_count: int, size: int, seed: int
) -> dict[str, torch.Tensor]:
    """Val scores (as :mod:`faceparse.metrics` computes them) of the majority-label-per-colour
    classifier. Faces ``0..train_count-1`` of ``seed`` fit the table; the next ``val_count``
    are scored. Colour bins never seen in training predict background.
    """
    n = OURFACE.num_classes
    train_bins, train_labels = _pixels(seed, 0, train_count, size)
    counts = np.bincount(train_bins * n + train_labels, minlength=_LEVELS**3 * n)
    table = counts.reshape(_LEVELS**3, n).argmax(1)
    val_bins, val_labels = _pixels(seed, train_count, val_count, size)
    metrics = SegmentationMetrics(n)
    metrics.update(torch.from_numpy(table[val_bins]), torch.from_numpy(val_labels))
    return metrics.compute()


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="training faces")
    parser.add_argument("--val-count", type=int, default=None, help="default: count // 4")
    parser.add_argument("--size", type=int, default=96, help="render size in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    val_count = args.val_count or max(1, args.count // 4)

    scores = colour_classifier_scores(args.count, val_count, args.size, args.seed)
    rows = zip(OURFACE.class_names, scores["f1"].tolist(), scores["present"].tolist(), strict=True)
    for name, score, seen in rows:
        print(f"{name:>15s}  {score:.3f}" if seen else f"{name:>15s}  (absent)")
    mean = float(scores["f1_mean"])
    print(f"mean F1 over foreground classes present: {mean:.3f}")
    return mean


if __name__ == "__main__":
    main()
