"""The face parser: an :class:`~faceparse.models.base.Encoder` wired to a decoder."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from faceparse.models.base import Encoder

__all__ = ["FaceParser"]


class FaceParser(nn.Module):
    """Encoder + decoder; ``forward`` maps ImageNet-normalised images to per-pixel logits.

    Args:
        encoder: any :class:`Encoder` (maps ordered by stride, ``out_channels``, ``strides``).
        decoder: builds the decoder from ``in_channels``, ``in_strides``, ``encoder_name``
            and ``num_classes`` (a Hydra ``_partial_`` config), so widths are never typed
            twice and a mismatch is refused at construction.
        num_classes: classes of the label scheme.

    ``config`` is the config the net was built from, when it was built from one
    (:func:`faceparse.checkpoints.build_face_parser`): checkpoints store it, so the file
    alone rebuilds the net.
    """

    def __init__(
        self,
        encoder: Encoder,
        decoder: Callable[..., nn.Module],
        num_classes: int,
    ) -> None:
        super().__init__()
        if not isinstance(encoder, Encoder):
            raise TypeError(
                f"{type(encoder).__name__} is not a faceparse.models.Encoder (maps ordered by "
                f"stride, out_channels and strides): subclass it"
            )
        self.encoder = encoder
        self.decoder = decoder(in_channels=encoder.out_channels, in_strides=encoder.strides,
                               encoder_name=type(encoder).__name__, num_classes=num_classes)
        self.num_classes = num_classes
        self.config: Mapping[str, Any] | None = None

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this (the encoder's coarsest stride)."""
        return self.encoder.size_multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_aux(x, with_aux=False)[0]

    def forward_with_aux(
        self, x: torch.Tensor, with_aux: bool = True
    ) -> tuple[torch.Tensor, Sequence[torch.Tensor]]:
        """Logits plus the decoder's auxiliary logits (used by the training loss)."""
        self.check_input_size(x)
        return self.decoder(self.encoder(x), with_aux=with_aux)

    def check_input_size(self, x: torch.Tensor) -> None:
        """Fail with a clear message instead of a shape error deep in the ViT or decoder."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[0] == 0:
            raise ValueError(f"expected images of shape (B, 3, H, W), B >= 1, got "
                             f"{tuple(x.shape)}")
        if not x.is_floating_point() or (x.dtype == torch.float64
                                         and next(self.parameters()).dtype != torch.float64):
            raise ValueError(f"expected a float32 (or bf16/fp16) image batch normalised with "
                             f"ImageNet mean/std, got {x.dtype}; faceparse.inference.Parser "
                             f"takes raw images")
        h, w = x.shape[-2:]
        m = self.size_multiple
        if h % m or w % m:
            up = lambda n: -(-n // m) * m  # noqa: E731
            raise ValueError(
                f"input size {h}x{w} is not a multiple of {m} (the coarsest stride of "
                f"{type(self.encoder).__name__}); resize or pad to e.g. {up(h)}x{up(w)} "
                f"(training: data.image_size={up(max(h, w))})"
            )
