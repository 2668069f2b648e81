"""Parity of an exported model with the torch net it came from, on real-looking faces.

Random noise exercises none of the paths a face does; the synthetic portraits from
:mod:`faceparse.data.synthetic` do, and need no download. An export whose logits or
labels drift beyond the tolerance is refused, not shipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from faceparse.data.synthetic.render import render_face
from faceparse.data.transforms import eval_transform

__all__ = ["ParityError", "ParityReport", "check_parity", "parity_inputs"]


class ParityError(RuntimeError):
    """The exported model's outputs differ from the torch net's beyond the tolerance."""


@dataclass
class ParityReport:
    """Max abs logit difference and share of pixels with the same argmax, vs tolerances."""

    max_abs_diff: float
    argmax_agreement: float
    atol: float
    min_agreement: float
    images: int
    size: int

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.atol and self.argmax_agreement >= self.min_agreement

    def describe(self) -> str:
        return (f"parity on {self.images} synthetic faces at {self.size} px: max |logit diff| "
                f"{self.max_abs_diff:.2e} (tolerance {self.atol:g}), argmax agreement "
                f"{self.argmax_agreement:.4%} (at least {self.min_agreement:.2%})")

    def to_json(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def parity_inputs(count: int, size: int, seed: int = 12345) -> torch.Tensor:
    """``count`` synthetic portraits, resized and normalised like evaluation inputs."""
    transform = eval_transform(size)
    images = []
    for index in range(count):
        image, mask = render_face(seed, index, size)
        images.append(transform(image=image, mask=mask)["image"])
    return torch.stack(images).float()


def check_parity(
    net: nn.Module,
    exported: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    atol: float = 1e-3,
    min_agreement: float = 0.999,
) -> ParityReport:
    """Compare on ``inputs`` one image at a time; raise :class:`ParityError` past tolerance,
    for a difference that is not a number (NaN or infinite logits on either side), or when
    the export cannot run the input at all (a shape it froze at the export size)."""
    worst, same, total = 0.0, 0, 0
    with torch.inference_mode():
        for image in inputs.split(1):
            ours = net(image).float()
            try:
                theirs = exported(image).float()
            except Exception as error:  # onnxruntime's own errors, TorchScript's
                first = str(error).strip().splitlines()[0] if str(error).strip() else ""
                raise ParityError(f"the export cannot run a {image.shape[-2]}x"
                                  f"{image.shape[-1]} px input ({type(error).__name__}: "
                                  f"{first}): export this model with dynamic=false") from None
            if theirs.shape != ours.shape:
                raise ParityError(f"the export gives logits {tuple(theirs.shape)}, the torch "
                                  f"net {tuple(ours.shape)}")
            difference = float((ours - theirs).abs().max())
            worst = max(worst, difference if math.isfinite(difference) else math.inf)
            same += int((ours.argmax(1) == theirs.argmax(1)).sum())
            total += int(np.prod(ours.shape[-2:])) * ours.shape[0]
    report = ParityReport(worst, same / total, atol, min_agreement, len(inputs),
                          int(inputs.shape[-1]))
    if not report.passed:
        raise ParityError(f"export failed its parity check: {report.describe()}")
    return report
