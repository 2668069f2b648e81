"""The reference coarse-to-fine fusion decoder (the original FaceParsing project's design).

It takes five feature maps at strides 1, 2, 4, 8, 16 (any channel counts, given up
front), walks from the stride-16 semantic map down to full resolution, and returns
full-resolution logits plus auxiliary logits at strides 8, 4, 2 for deep supervision.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from faceparse.models.base import check_feature_maps
from faceparse.models.blocks import (
    AttentionRefinement,
    CoarseToFineBlock,
    ConvBNReLU,
    FeatureFusion,
)
from faceparse.option_values import boolean, is_number, is_whole, shown

__all__ = ["CoarseToFineDecoder", "DECODER_STRIDES"]

DECODER_STRIDES: tuple[int, ...] = (1, 2, 4, 8, 16)


class CoarseToFineDecoder(nn.Module):
    """Coarse-to-fine decoder over a stride 1..16 pyramid.

    Args:
        in_channels: channels of the encoder maps at strides 1, 2, 4, 8, 16.
        num_classes: output classes.
        in_strides: the strides the encoder gives; anything but 1, 2, 4, 8, 16 is refused.
        encoder_name: names the encoder in that refusal.
        decoder_channels: width ``C``; adapters give C/4, C/2, C, C, 2C channels.
        attention_refinement: gate the stride-16 map with global context (reference: on).
        dropout: Dropout2d before the final classifier.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        decoder_channels: int = 256,
        attention_refinement: bool = True,
        dropout: float = 0.1,
        in_strides: Sequence[int] = DECODER_STRIDES,
        encoder_name: str = "the encoder",
    ) -> None:
        super().__init__()
        boolean("decoder.attention_refinement", attention_refinement)
        check_feature_maps(type(self).__name__, DECODER_STRIDES, encoder_name, in_channels,
                           in_strides)
        if not is_whole(decoder_channels) or decoder_channels < 16 or decoder_channels % 16:
            raise ValueError(f"decoder.decoder_channels={shown(decoder_channels)}: the decoder's "
                             f"width is a positive multiple of 16, e.g. 256")
        if not is_number(dropout) or not 0 <= dropout < 1:
            raise ValueError(f"decoder.dropout={shown(dropout)}: a drop probability in [0, 1)")
        c = decoder_channels
        widths = (c // 4, c // 2, c, c, 2 * c)
        self.in_channels = tuple(in_channels)
        self.num_classes = num_classes
        self.adapt_scale1 = ConvBNReLU(in_channels[0], widths[0], 1)
        self.adapt_scale2 = ConvBNReLU(in_channels[1], widths[1], 1)
        self.adapt_scale4 = ConvBNReLU(in_channels[2], widths[2], 1)
        self.adapt_scale8 = ConvBNReLU(in_channels[3], widths[3], 1)
        self.adapt_scale16 = ConvBNReLU(in_channels[4], widths[4], 1)
        self.arm16 = AttentionRefinement(widths[4]) if attention_refinement else nn.Identity()

        self.ctf_16_8 = CoarseToFineBlock(widths[4], widths[3], widths[3])
        self.ctf_8_4 = CoarseToFineBlock(widths[3], widths[2], widths[2])
        self.ctf_4_2 = CoarseToFineBlock(widths[2], widths[1], widths[1])
        self.ctf_2_1 = CoarseToFineBlock(widths[1], widths[0], widths[0])
        self.ffm_8 = FeatureFusion(2 * widths[3], widths[3])
        self.ffm_4 = FeatureFusion(2 * widths[2], widths[2])
        self.ffm_2 = FeatureFusion(2 * widths[1], widths[1])
        self.ffm_1 = FeatureFusion(2 * widths[0], widths[0])

        self.aux_head_8 = nn.Conv2d(widths[3], num_classes, 1)
        self.aux_head_4 = nn.Conv2d(widths[2], num_classes, 1)
        self.aux_head_2 = nn.Conv2d(widths[1], num_classes, 1)
        self.final_conv = nn.Sequential(
            ConvBNReLU(widths[0], widths[0]),
            nn.Dropout2d(dropout),
            nn.Conv2d(widths[0], num_classes, 1),
        )

    def forward(
        self, features: Sequence[torch.Tensor], with_aux: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return full-resolution logits and, when ``with_aux``, aux logits (strides 8, 4, 2)."""
        if len(features) != len(DECODER_STRIDES):
            raise ValueError(f"expected {len(DECODER_STRIDES)} feature maps, got {len(features)}")
        f1 = self.adapt_scale1(features[0])
        f2 = self.adapt_scale2(features[1])
        f4 = self.adapt_scale4(features[2])
        f8 = self.adapt_scale8(features[3])
        f16 = self.arm16(self.adapt_scale16(features[4]))

        d8 = self.ffm_8(self.ctf_16_8(f16, f8), f8)
        d4 = self.ffm_4(self.ctf_8_4(d8, f4), f4)
        d2 = self.ffm_2(self.ctf_4_2(d4, f2), f2)
        d1 = self.ffm_1(self.ctf_2_1(d2, f1), f1)
        logits = self.final_conv(d1)
        if not with_aux:
            return logits, []
        size = logits.shape[-2:]
        aux = [
            F.interpolate(head(x), size=size, mode="bilinear", align_corners=False)
            for head, x in ((self.aux_head_8, d8), (self.aux_head_4, d4), (self.aux_head_2, d2))
        ]
        return logits, aux
