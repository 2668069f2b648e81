"""The face parser: an encoder (any of :mod:`faceparse.models.encoders`) wired to a decoder."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["FaceParser", "SIZE_MULTIPLE"]

SIZE_MULTIPLE = 16


class FaceParser(nn.Module):
    """Encoder + decoder; ``forward`` maps ImageNet-normalised images to per-pixel logits.

    Args:
        encoder: returns maps ordered by stride and exposes ``out_channels``.
        decoder: builds the decoder from ``in_channels`` and ``num_classes``
            (a Hydra ``_partial_`` config), so widths are never typed twice.
        num_classes: classes of the label scheme.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: Callable[..., nn.Module],
        num_classes: int,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder(in_channels=encoder.out_channels, num_classes=num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_aux(x, with_aux=False)[0]

    def forward_with_aux(
        self, x: torch.Tensor, with_aux: bool = True
    ) -> tuple[torch.Tensor, Sequence[torch.Tensor]]:
        """Logits plus the decoder's auxiliary logits (used by the training loss)."""
        check_input_size(x)
        return self.decoder(self.encoder(x), with_aux=with_aux)


def check_input_size(x: torch.Tensor) -> None:
    """Fail with a clear message instead of a shape error deep in the ViT or decoder."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
        raise ValueError(
            f"input size {h}x{w} is not a multiple of {SIZE_MULTIPLE}; resize or pad to e.g. "
            f"{_round_up(h)}x{_round_up(w)}"
        )


def _round_up(n: int) -> int:
    return -(-n // SIZE_MULTIPLE) * SIZE_MULTIPLE
