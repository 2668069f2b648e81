"""Test-time augmentation: horizontal flip with the left/right class swap, and scales.

A flipped face has its left eye where the right one was, so the flipped pass's logits
are mirrored back *and* their left/right channels swapped, with the same lookup the
training flip applies to masks (:meth:`LabelScheme.flip_lut`). Logits of every pass
are resized to the input size and averaged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from faceparse.labels import LabelScheme

__all__ = ["MultiPassTTA"]


@dataclass(frozen=True)
class MultiPassTTA:
    """``flip``: add mirrored passes; ``scales``: input scale factors (1.0 = as given).

    ``size_multiple`` rounds scaled sides to what the net accepts.
    """

    flip: bool = False
    scales: tuple[float, ...] = (1.0,)
    size_multiple: int = 16

    def __post_init__(self) -> None:
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"tta.scales must be positive numbers, got {list(self.scales)}")

    @property
    def passes(self) -> int:
        return len(self.scales) * (2 if self.flip else 1)

    def describe(self) -> str:
        if self.passes == 1 and self.scales == (1.0,):
            return "none"
        parts = [f"scales {list(self.scales)}"] if self.scales != (1.0,) else []
        if self.flip:
            parts.append("horizontal flip with left/right class swap")
        return ", ".join(parts) + " (logits averaged)"

    def _scaled_side(self, side: int, scale: float) -> int:
        m = self.size_multiple
        return max(m, round(side * scale / m) * m)

    def __call__(self, net: nn.Module, images: torch.Tensor, scheme: LabelScheme
                 ) -> torch.Tensor:
        """Averaged float32 logits (B, C, H, W) at the size of ``images``."""
        h, w = images.shape[-2:]
        swap = torch.as_tensor(scheme.flip_lut()[: scheme.num_classes].astype("int64"),
                               device=images.device)
        total = None
        for scale in self.scales:
            size = (self._scaled_side(h, scale), self._scaled_side(w, scale))
            scaled = images if size == (h, w) else F.interpolate(
                images, size=size, mode="bilinear", align_corners=False)
            for flipped in (False, True) if self.flip else (False,):
                logits = net(scaled.flip(-1) if flipped else scaled).float()
                if flipped:
                    logits = logits.flip(-1)[:, swap]
                if logits.shape[-2:] != (h, w):
                    logits = F.interpolate(logits, size=(h, w), mode="bilinear",
                                           align_corners=False)
                total = logits if total is None else total + logits
        return total / self.passes
