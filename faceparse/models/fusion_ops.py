"""Where the CNN and ViT maps meet: the stride-16 fusion ops and the finer ViT entry points.

Each op is a plain module built from the two branches' channel counts; the dual encoder
takes one (a Hydra ``_partial_`` from ``conf/fusion/``), so an ablation is a config file,
never a branch on a name. ``needs_cnn`` says whether the op reads the CNN's own stride-16
map (VGG block 5, ``cnn.num_stages=5``); the reference :class:`VitOnlyFusion` does not:
the CNN stops at stride 8 and the ViT map is the stride-16 level, with no parameters, so
the original project's checkpoints keep their keys.
"""

from __future__ import annotations

import torch
from torch import nn

from faceparse.models.blocks import ConvBNReLU, upsample_bilinear
from faceparse.option_values import whole_number

__all__ = [
    "CrossAttentionFusion",
    "ConcatFusion",
    "GatedFusion",
    "StrideFusion",
    "SumFusion",
    "VitInjection",
    "VitOnlyFusion",
]


class StrideFusion(nn.Module):
    """Base of the stride-16 ops: ``forward(cnn16, vit) -> map`` with ``out_channels``.

    ``cnn16`` is the CNN's stride-16 map (None when ``needs_cnn`` is false), ``vit`` the
    ViT map at the same size; ``out_channels`` defaults to the ViT's width, so the
    decoder's stride-16 adapter keeps the reference input width.
    """

    needs_cnn: bool = True
    out_channels: int

    def forward(self, cnn16: torch.Tensor | None, vit: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class VitOnlyFusion(StrideFusion):
    """The reference: the ViT map is the stride-16 level as it is (no CNN block 5)."""

    needs_cnn = False

    def __init__(self, cnn_channels: int, vit_channels: int) -> None:
        super().__init__()
        self.out_channels = vit_channels

    def forward(self, cnn16: torch.Tensor | None, vit: torch.Tensor) -> torch.Tensor:
        return vit


def fused_width(out_channels: int | None, vit_channels: int) -> int:
    """``fusion.op.out_channels``, or the ViT's width when it is null (0 is refused, not
    taken as null)."""
    if out_channels is None:
        return vit_channels
    return whole_number("fusion.op.out_channels", out_channels, 1,
                        "the fused map's width (null: the ViT's)")


class ConcatFusion(StrideFusion):
    """Concatenate VGG block 5 with the ViT map, then project with a 1x1 Conv-BN-ReLU."""

    def __init__(self, cnn_channels: int, vit_channels: int, out_channels: int | None = None
                 ) -> None:
        super().__init__()
        self.out_channels = fused_width(out_channels, vit_channels)
        self.project = ConvBNReLU(cnn_channels + vit_channels, self.out_channels, 1)

    def forward(self, cnn16: torch.Tensor | None, vit: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([cnn16, vit], dim=1))


class SumFusion(StrideFusion):
    """Project each branch to a common width (1x1 Conv-BN-ReLU), then add them."""

    def __init__(self, cnn_channels: int, vit_channels: int, out_channels: int | None = None
                 ) -> None:
        super().__init__()
        self.out_channels = fused_width(out_channels, vit_channels)
        self.cnn_proj = ConvBNReLU(cnn_channels, self.out_channels, 1)
        self.vit_proj = ConvBNReLU(vit_channels, self.out_channels, 1)

    def forward(self, cnn16: torch.Tensor | None, vit: torch.Tensor) -> torch.Tensor:
        return self.cnn_proj(cnn16) + self.vit_proj(vit)


class GatedFusion(SumFusion):
    """A learned per-pixel, per-channel gate mixes the projected branches: g*cnn + (1-g)*vit.

    The gate sees both projections, so it can prefer CNN detail on edges and ViT context
    inside regions.
    """

    def __init__(self, cnn_channels: int, vit_channels: int, out_channels: int | None = None
                 ) -> None:
        super().__init__(cnn_channels, vit_channels, out_channels)
        self.gate = nn.Conv2d(2 * self.out_channels, self.out_channels, 1)

    def forward(self, cnn16: torch.Tensor | None, vit: torch.Tensor) -> torch.Tensor:
        c, v = self.cnn_proj(cnn16), self.vit_proj(vit)
        g = torch.sigmoid(self.gate(torch.cat([c, v], dim=1)))
        return g * c + (1 - g) * v


class CrossAttentionFusion(StrideFusion):
    """CNN stride-16 features attend to the ViT tokens (queries: CNN, keys/values: ViT).

    ``torch.nn.MultiheadAttention`` with a residual on the projected CNN queries and a
    LayerNorm, as in a transformer decoder's cross-attention; ``num_heads`` must divide
    the output width.
    """

    def __init__(self, cnn_channels: int, vit_channels: int, out_channels: int | None = None,
                 num_heads: int = 8) -> None:
        super().__init__()
        self.out_channels = fused_width(out_channels, vit_channels)
        whole_number("fusion.op.num_heads", num_heads, 1, "the number of attention heads")
        if self.out_channels % num_heads:
            raise ValueError(f"cross_attn: num_heads={num_heads} must divide the fused width "
                             f"{self.out_channels} (fusion.op.num_heads / fusion.op.out_channels)")
        self.query = nn.Conv2d(cnn_channels, self.out_channels, 1)
        self.attention = nn.MultiheadAttention(
            self.out_channels, num_heads, kdim=vit_channels, vdim=vit_channels, batch_first=True
        )
        self.norm = nn.LayerNorm(self.out_channels)

    def forward(self, cnn16: torch.Tensor | None, vit: torch.Tensor) -> torch.Tensor:
        q = self.query(cnn16)
        b, c, h, w = q.shape
        queries = q.flatten(2).transpose(1, 2)        # (B, HW, C)
        tokens = vit.flatten(2).transpose(1, 2)       # (B, HW, C_vit)
        attended, _ = self.attention(queries, tokens, tokens, need_weights=False)
        out = self.norm(queries + attended)
        return out.transpose(1, 2).reshape(b, c, h, w)


class VitInjection(nn.Module):
    """Carry the ViT map into a finer CNN level: 1x1 Conv-BN-ReLU to the level's width,
    bilinear upsampling, added to the CNN map (its width, so the decoder is unchanged)."""

    def __init__(self, vit_channels: int, cnn_channels: int) -> None:
        super().__init__()
        self.project = ConvBNReLU(vit_channels, cnn_channels, 1)

    def forward(self, cnn: torch.Tensor, vit: torch.Tensor) -> torch.Tensor:
        return cnn + upsample_bilinear(self.project(vit), cnn.shape[-2:])
