"""The encoder/decoder contract, written once as code (segmentation_models.pytorch's habit).

An :class:`Encoder` returns one NCHW map per entry of ``strides``, finest first, with
``out_channels[i]`` channels; a decoder is built from those two tuples and checks them up
front with :func:`check_feature_maps`, so a mismatch names both sides at construction
instead of failing as a shape error deep inside a forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["Encoder", "check_feature_maps"]


class Encoder(nn.Module):
    """Base class of every encoder: maps ordered by stride, with their channels and strides.

    Subclasses set ``out_channels`` and ``strides`` (tuples of equal length, strides
    increasing) in ``__init__`` and return ``len(strides)`` maps from ``forward``.
    """

    out_channels: tuple[int, ...]
    strides: tuple[int, ...]

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of the coarsest stride (the ViT patch, VGG's pools)."""
        return max(self.strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError


def check_feature_maps(
    decoder: str,
    needed_strides: Sequence[int],
    encoder: str,
    channels: Sequence[int],
    strides: Sequence[int],
) -> None:
    """Refuse an encoder whose maps a decoder cannot take, naming both and what each has."""
    if len(channels) != len(strides):
        raise ValueError(
            f"{encoder} declares {len(channels)} channel counts {tuple(channels)} for "
            f"{len(strides)} strides {tuple(strides)}"
        )
    if tuple(strides) != tuple(needed_strides):
        raise ValueError(
            f"{decoder} needs feature maps at strides {tuple(needed_strides)}, but {encoder} "
            f"gives strides {tuple(strides)} (channels {tuple(channels)})"
        )
