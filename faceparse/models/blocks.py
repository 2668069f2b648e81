"""Building blocks of the coarse-to-fine decoder.

Attribute names (``conv``/``bn``, ``attention``, ``fc1``/``fc2``, ``coarse_conv``,
``fine_conv``, ``fusion``, ``refine``, ``depthwise``/``pointwise``) follow the original
FaceParsing project's checkpoints so its ``decoder.ckpt`` files load without renaming.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "keep_dtype",
    "upsample_bilinear",
    "ConvBNReLU",
    "DepthwiseSeparableConv",
    "AttentionRefinement",
    "FeatureFusion",
    "CoarseToFineBlock",
]


def keep_dtype(x: torch.Tensor) -> contextlib.AbstractContextManager[Any]:
    """Autocast switched off for an op on ``x`` when ``x`` is already bf16 or fp16.

    CUDA autocast runs some ops in fp32 whatever their input (upsampling, LayerNorm): a
    bf16 map went in, an fp32 one came out, and the next matmul or convolution cast it
    back. The GPU's low-precision kernels compute in fp32 internally and round once, so
    the next op sees the same values without the two extra passes.
    """
    if x.dtype in (torch.bfloat16, torch.float16) and torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def upsample_bilinear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize (``align_corners=False``) in ``x``'s own dtype, autocast or not.

    Under CUDA autocast a bf16 map came back fp32, at twice the bytes and four times the
    pixels, and the concatenation after it then turned fp32 as well (:func:`keep_dtype`).
    """
    with keep_dtype(x):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ConvBNReLU(nn.Module):
    """Bias-free convolution, BatchNorm, ReLU; padding keeps the spatial size."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class DepthwiseSeparableConv(nn.Module):
    """3x3 depthwise + 1x1 pointwise convolution, BatchNorm, ReLU: a cheap refinement."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.pointwise(self.depthwise(x))))


class AttentionRefinement(nn.Module):
    """Channel gate from the global context of a map (BiSeNet's ARM)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, channels, 1),
            nn.BatchNorm2d(channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class FeatureFusion(nn.Module):
    """Concatenate two maps, project with a 1x1 conv, re-weight channels (squeeze-excitation)."""

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels, kernel_size=1)
        self.fc1 = nn.Conv2d(out_channels, out_channels // reduction, 1)
        self.fc2 = nn.Conv2d(out_channels // reduction, out_channels, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x = self.conv(torch.cat([a, b], dim=1))
        gate = F.adaptive_avg_pool2d(x, 1)
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(gate))))
        return x * gate


class CoarseToFineBlock(nn.Module):
    """Upsample a coarse map onto a finer skip map, fuse both, refine the result."""

    def __init__(self, coarse_channels: int, fine_channels: int, out_channels: int) -> None:
        super().__init__()
        self.coarse_conv = ConvBNReLU(coarse_channels, out_channels)
        self.fine_conv = ConvBNReLU(fine_channels, out_channels)
        self.fusion = FeatureFusion(2 * out_channels, out_channels)
        self.refine = nn.Sequential(
            DepthwiseSeparableConv(out_channels, out_channels),
            DepthwiseSeparableConv(out_channels, out_channels),
        )

    def forward(self, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        coarse = upsample_bilinear(self.coarse_conv(coarse), fine.shape[-2:])
        return self.refine(self.fusion(coarse, self.fine_conv(fine)))
