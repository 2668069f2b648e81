"""How the CNN and ViT branches combine into one pyramid of maps ordered by stride.

:class:`DualEncoder` is the reference: VGG maps at strides 1-8 plus the DINOv3 map at
stride 16; its fusion op (``faceparse.models.fusion_ops``, ``conf/fusion/``) and the
strides the ViT enters are the fusion ablations. :class:`VitPyramidEncoder` is the
ViT-only ablation: a simple pyramid built from the ViT map, with no CNN detail.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
from omegaconf import ListConfig
from torch import nn

from faceparse.models.base import Encoder
from faceparse.models.blocks import ConvBNReLU, upsample_bilinear
from faceparse.models.dinov3 import DinoVitEncoder
from faceparse.models.fusion_ops import StrideFusion, VitInjection, VitOnlyFusion
from faceparse.models.vgg import VggEncoder
from faceparse.option_values import is_whole, shown

__all__ = ["DualEncoder", "VitPyramidEncoder"]


class DualEncoder(Encoder):
    """The CNN's maps below the ViT stride, then one fused map at the ViT stride.

    Args:
        cnn: the CNN branch; it stops below the ViT stride, or reaches it (VGG block 5,
            ``cnn.num_stages=5``) when the fusion op reads the CNN there.
        vit: the ViT branch (one map, stride 16).
        fusion: builds the stride-16 op from ``cnn_channels`` and ``vit_channels`` (a
            Hydra ``_partial_`` from ``conf/fusion/``); default: the reference
            :class:`~faceparse.models.fusion_ops.VitOnlyFusion`.
        vit_into: the strides the ViT enters: its own (reference) and optionally finer CNN
            levels, where it is projected, upsampled and added
            (:class:`~faceparse.models.fusion_ops.VitInjection`).

    The defaults add no parameters: the original project's checkpoints load as they are.
    """

    def __init__(
        self,
        cnn: VggEncoder,
        vit: DinoVitEncoder,
        fusion: Callable[..., StrideFusion] = VitOnlyFusion,
        vit_into: Sequence[int] = (16,),
    ) -> None:
        super().__init__()
        (vit_stride,) = vit.strides
        (vit_channels,) = vit.out_channels
        op = fusion(cnn_channels=cnn.out_channels[-1], vit_channels=vit_channels)
        name = type(op).__name__
        if op.needs_cnn and max(cnn.strides) != vit_stride:
            raise ValueError(
                f"{name} fuses the CNN's stride-{vit_stride} map with the ViT's, and the CNN "
                f"branch stops at stride {max(cnn.strides)}: set cnn.num_stages=5"
            )
        if not op.needs_cnn and max(cnn.strides) >= vit_stride:
            raise ValueError(
                f"the CNN branch reaches stride {max(cnn.strides)} and the ViT starts at "
                f"{vit_stride}: {name} needs the CNN to stop below the ViT (cnn.num_stages=4)"
            )
        finer = [s for s in cnn.strides if s < vit_stride]
        into = sorted(set(vit_into), reverse=True)
        if len(into) != len(vit_into) or vit_stride not in into or not set(into) <= {
            *finer, vit_stride
        }:
            raise ValueError(
                f"fusion.vit_into={list(vit_into)}: list each stride once, the ViT's own "
                f"{vit_stride} first, then any of the CNN's finer strides {finer[::-1]} "
                f"(e.g. [{vit_stride}, 8, 4])"
            )
        self.cnn = cnn
        self.vit = vit
        self.fusion = op
        # one injection per finer level the ViT enters, keyed by stride ("8", "4")
        self.vit_into = nn.ModuleDict({
            str(s): VitInjection(vit_channels, cnn.out_channels[cnn.strides.index(s)])
            for s in into[1:]
        })
        self.out_channels = tuple(cnn.out_channels[: len(finer)]) + (op.out_channels,)
        self.strides = (*finer, vit_stride)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        cnn_maps = self.cnn(x)
        (vit_map,) = self.vit(x)
        fine = cnn_maps[: len(self.strides) - 1]
        for stride, inject in self.vit_into.items():
            at = self.strides.index(int(stride))
            fine[at] = inject(fine[at], vit_map)
        # VGG block 5 when the op reads it (the CNN then reaches the ViT stride)
        cnn16 = cnn_maps[-1] if len(cnn_maps) == len(self.strides) else None
        return fine + [self.fusion(cnn16, vit_map)]


def _pyramid_widths(widths: Any, vit_stride: int) -> tuple[int, ...]:
    """``encoder.pyramid_channels``: one width >= 1 per stride below the ViT's (1, 2, 4, 8
    for a /16 ViT), refused here rather than as a torch error in the first step."""
    levels = vit_stride.bit_length() - 1
    example = ",".join(str(64 * 2**i) for i in range(levels))
    if not isinstance(widths, Sequence | ListConfig) or isinstance(widths, str) or len(
            widths) != levels:
        raise ValueError(f"encoder.pyramid_channels={shown(widths)}: {levels} widths, one per "
                         f"stride below the ViT's {vit_stride}, e.g. [{example}]")
    for width in widths:
        if isinstance(width, numbers.Integral) and not isinstance(width, bool):
            width = int(width)  # a numpy int from a config built in Python
        if not is_whole(width) or width < 1:
            raise ValueError(f"encoder.pyramid_channels={shown(widths)}: each width is a whole "
                             f"number >= 1, e.g. [{example}]")
    return tuple(int(w) for w in widths)


class VitPyramidEncoder(Encoder):
    """A simple feature pyramid (strides 1 up to the ViT's) built from the ViT map alone.

    Each finer level is a 1x1 projection of the ViT map, bilinearly upsampled and refined
    by a 3x3 conv: the ViT-only ablation, with no CNN detail.
    """

    def __init__(
        self, vit: DinoVitEncoder, pyramid_channels: Sequence[int] = (64, 128, 256, 512)
    ) -> None:
        super().__init__()
        self.vit = vit
        (vit_channels,) = vit.out_channels
        pyramid_channels = _pyramid_widths(pyramid_channels, vit.strides[0])
        self.levels = torch.nn.ModuleList(
            torch.nn.Sequential(ConvBNReLU(vit_channels, c, 1), ConvBNReLU(c, c, 3))
            for c in pyramid_channels
        )
        self.out_channels = (*pyramid_channels, vit_channels)
        self.strides = tuple(2**i for i in range(len(pyramid_channels))) + tuple(vit.strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        (top,) = self.vit(x)
        maps = []
        for stride, level in zip(self.strides, self.levels, strict=False):
            size = (x.shape[-2] // stride, x.shape[-1] // stride)
            proj = level[0](top)
            maps.append(level[1](upsample_bilinear(proj, size)))
        return maps + [top]
