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

    def sides(self, side: int) -> list[int]:
        """The side each scale runs at for an input ``side`` (rounded to what the net takes)."""
        return [self._scaled_side(side, scale) for scale in self.scales]

    def check_sides(self, side: int, option: str = "image_size") -> None:
        """Refuse scales that round to one side at ``side``: they would run the same pass
        again (``[0.9, 1.0, 1.1]`` at 64 px is three 64 px passes), a multi-scale score in
        name only."""
        sides = self.sides(side)
        same = [f"{a} and {b} would be the same pass"
                for i, a in enumerate(self.scales) for j, b in enumerate(self.scales)
                if i < j and sides[i] == sides[j]]
        same += [f"{s} would run at the input size" for s, ran in zip(self.scales, sides,
                                                                     strict=True)
                 if s != 1.0 and ran == side]
        if same:
            raise ValueError(
                f"tta.scales={list(self.scales)} at {option}={side} run at "
                f"{', '.join(map(str, sides))} px (sides round to multiples of "
                f"{self.size_multiple}): {same[0]}; use scales further apart, or a larger "
                f"{option}")

    def describe(self, side: int | None = None) -> str:
        """The passes, with the sides the scales ran at when the input ``side`` is known."""
        if self.passes == 1 and self.scales == (1.0,):
            return "none"
        ran = f" ({', '.join(map(str, self.sides(side)))} px)" if side else ""
        parts = [f"scales {list(self.scales)}{ran}"] if self.scales != (1.0,) else []
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
