"""Logits back to the photo's size and their argmax, a strip of rows at a time, without torch.

The label map is the argmax of logits resized to the photo (resizing labels instead gives
blocky edges). A 24-megapixel photo with 19 classes would need 1.8 GB of float logits at
full size, so larger photos are made in strips of rows under a memory budget.

Each strip is what ``F.interpolate(mode="bilinear", align_corners=False)`` gives for its
rows, to float rounding (~3e-7 relative; OpenCV computes its weights slightly differently):
one OpenCV resize when the photo's logits fit the budget; otherwise OpenCV resizes the width
of the source rows a strip needs (a resize whose height is unchanged blends rows with
weights 1 and 0), then blends each output row from its two source rows. With no torch op
in here the photo side runs in writer threads beside the model without starting more
intra-op threads than there are cores, and OpenCV's float resize is ~4x faster than
torch's on a CPU.

The argmax is taken only where it can change: where the four model-resolution pixels an
output pixel blends agree on their class, every class's blended logit is a convex
combination of values that class never exceeds, so the output's argmax is that class
(floating-point rounding is monotone and keeps it). Inside a region, the label map is read
from the model-resolution argmax; at boundaries it is the argmax of the resized logits.
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
import torch

__all__ = ["STRIP_BYTES", "labels_at_size", "logits_hwc", "softmax_classes", "strips"]

STRIP_BYTES = 64 * 2**20  # float32 logits held at once (the whole photo when they fit)
OPENCV_CHANNELS = 512  # the most channels one cv2.resize takes (CV_CN_MAX)


def logits_hwc(logits: torch.Tensor | np.ndarray) -> np.ndarray:
    """(C, h, w) model-resolution logits as a (h, w, C) float32 array. NumPy only for
    logits already on the CPU (safe in writer threads); others are copied to it first."""
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(logits, np.float32).transpose(1, 2, 0))


def _sources(out_n: int, in_n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: the two source indices blended and the second one's weight
    (PyTorch's half-pixel convention, clamped at the edges)."""
    x = np.maximum((np.arange(out_n, dtype=np.float64) + 0.5) * (in_n / out_n) - 0.5, 0)
    low = np.minimum(np.floor(x).astype(np.intp), in_n - 1)
    return low, np.minimum(low + 1, in_n - 1), (x - low).astype(np.float32)


def _resize(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w, C) -> (H, W, C), bilinear; with h == H, linear along the width only."""
    channels = logits.shape[-1]
    if channels > OPENCV_CHANNELS:
        raise ValueError(f"{channels} classes: resizing logits takes at most "
                         f"{OPENCV_CHANNELS}")
    if logits.shape[:2] == size:
        return logits
    return cv2.resize(logits, size[::-1], interpolation=cv2.INTER_LINEAR
                      ).reshape(*size, channels)


def strips(logits: np.ndarray, size: tuple[int, int], budget: int = STRIP_BYTES
           ) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(row0, row1, logits (row1 - row0, W, C))`` covering a (H, W) photo.

    ``logits`` is (h, w, C) float32 at model resolution (:func:`logits_hwc`).
    """
    in_h, in_w, channels = logits.shape
    out_h, out_w = size
    if 4 * channels * out_h * out_w <= budget:  # one resize: OpenCV blends rows as it goes
        yield 0, out_h, _resize(logits, (out_h, out_w))
        return
    rows = max(1, budget // (4 * channels * out_w))
    low, high, weight = _sources(out_h, in_h)
    for start in range(0, out_h, rows):
        stop = min(out_h, start + rows)
        first = start if in_h == out_h else low[start]
        band = logits[first:stop if in_h == out_h else high[stop - 1] + 1]
        band = _resize(band, (len(band), out_w))
        if in_h == out_h:  # nothing to blend: the rows are the source rows
            yield start, stop, band
            continue
        strip = np.empty((stop - start, out_w, channels), np.float32)
        for i, y in enumerate(range(start, stop)):
            w = float(weight[y])
            cv2.addWeighted(band[low[y] - first], 1 - w, band[high[y] - first], w, 0.0,
                            dst=strip[i])
        yield start, stop, strip


def softmax_classes(strip: np.ndarray) -> np.ndarray:
    """Softmax over the last (class) axis of a float32 array."""
    exp = np.exp(strip - strip.max(-1, keepdims=True))
    exp /= exp.sum(-1, keepdims=True)
    return exp


def labels_at_size(logits: torch.Tensor | np.ndarray, size: tuple[int, int],
                   probs: bool = False, budget: int = STRIP_BYTES
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W) uint8 labels (the first maximum wins, as ``argmax``) and, when asked,
    (C, H, W) float16 probabilities, from (C, h, w) logits."""
    hwc = logits_hwc(logits)
    coarse = hwc.argmax(-1).astype(np.uint8)  # the model-resolution label map
    row_low, row_high, _ = _sources(size[0], hwc.shape[0])
    col_low, col_high, _ = _sources(size[1], hwc.shape[1])
    labels = np.empty(size, dtype=np.uint8)
    out = np.empty((hwc.shape[-1], *size), dtype=np.float16) if probs else None
    for start, stop, strip in strips(hwc, size, budget):
        top, bottom = coarse[row_low[start:stop]], coarse[row_high[start:stop]]
        corner = top[:, col_low]
        mixed = ((corner != top[:, col_high]) | (corner != bottom[:, col_low])
                 | (corner != bottom[:, col_high]))
        rows = labels[start:stop]  # C-contiguous: its flat view writes through
        rows[...] = corner
        where = np.flatnonzero(mixed)  # np.take of rows: ~2x faster than a boolean index
        rows.reshape(-1)[where] = np.take(strip.reshape(-1, strip.shape[-1]), where,
                                          axis=0).argmax(-1)
        if out is not None:
            out[:, start:stop] = softmax_classes(strip).transpose(2, 0, 1)
    return labels, out
