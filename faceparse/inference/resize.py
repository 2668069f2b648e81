"""Logits back to the photo's size, a strip of rows at a time.

The label map is the argmax of logits resized to the photo (resizing labels instead gives
blocky edges). A 24-megapixel photo with 19 classes would need 1.8 GB of float logits at
full size, so rows are interpolated in strips under a memory budget; each strip is exactly
what ``F.interpolate(mode="bilinear", align_corners=False)`` gives for those rows.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["STRIP_BYTES", "strips", "labels_at_size"]

STRIP_BYTES = 64 * 2**20  # float32 logits held at once per strip


def _source_rows(start: int, stop: int, out_h: int, in_h: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows to blend for output rows ``start:stop`` (PyTorch's half-pixel convention)."""
    y = (torch.arange(start, stop, dtype=torch.float64) + 0.5) * (in_h / out_h) - 0.5
    y = y.clamp(min=0)
    low = y.floor().long().clamp(max=in_h - 1)
    high = (low + 1).clamp(max=in_h - 1)
    return low, high, (y - low).float()


def strips(logits: torch.Tensor, size: tuple[int, int], budget: int = STRIP_BYTES
           ) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(row0, row1, logits (C, row1 - row0, W))`` covering a (H, W) photo.

    ``logits`` is (C, h, w) at model resolution, on any device.
    """
    channels, in_h, _ = logits.shape
    out_h, out_w = size
    logits = logits.float()
    rows = max(1, budget // (4 * channels * out_w))
    for start in range(0, out_h, rows):
        stop = min(out_h, start + rows)
        low, high, weight = (t.to(logits.device) for t in _source_rows(start, stop, out_h, in_h))
        blended = torch.lerp(logits[:, low], logits[:, high], weight[None, :, None])
        yield start, stop, F.interpolate(blended[None], size=(stop - start, out_w),
                                         mode="bilinear", align_corners=False)[0]


def labels_at_size(logits: torch.Tensor, size: tuple[int, int], probs: bool = False,
                   budget: int = STRIP_BYTES) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W) uint8 labels and, when asked, (C, H, W) float16 probabilities."""
    labels = np.empty(size, dtype=np.uint8)
    out = np.empty((logits.shape[0], *size), dtype=np.float16) if probs else None
    for start, stop, strip in strips(logits, size, budget):
        labels[start:stop] = strip.argmax(0).to(torch.uint8).cpu().numpy()
        if out is not None:
            out[:, start:stop] = strip.softmax(0).half().cpu().numpy()
    return labels, out
