"""How the CNN and ViT branches combine into one pyramid of maps ordered by stride.

:class:`DualEncoder` is the reference: VGG maps at strides 1-8 plus the DINOv3 map at
stride 16. :class:`VitPyramidEncoder` is the ViT-only ablation: a simple pyramid built
from the ViT map, with no CNN detail.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from faceparse.models.base import Encoder
from faceparse.models.blocks import ConvBNReLU
from faceparse.models.dinov3 import DinoVitEncoder
from faceparse.models.vgg import VggEncoder

__all__ = ["DualEncoder", "VitPyramidEncoder"]


class DualEncoder(Encoder):
    """The reference encoder: the CNN's maps, then the ViT's coarser one."""

    def __init__(self, cnn: VggEncoder, vit: DinoVitEncoder) -> None:
        super().__init__()
        if max(cnn.strides) >= min(vit.strides):
            raise ValueError(
                f"the CNN branch reaches stride {max(cnn.strides)} and the ViT starts at "
                f"{min(vit.strides)}: the dual encoder needs the CNN to stop below the ViT "
                f"(cnn.num_stages=4)"
            )
        self.cnn = cnn
        self.vit = vit
        self.out_channels = tuple(cnn.out_channels) + tuple(vit.out_channels)
        self.strides = tuple(cnn.strides) + tuple(vit.strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.cnn(x) + self.vit(x)


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
            maps.append(level[1](F.interpolate(proj, size=size, mode="bilinear")))
        return maps + [top]
