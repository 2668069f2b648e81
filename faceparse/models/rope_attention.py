"""DINOv3 attention with q and k rotated in five passes instead of about fourteen.

timm's EVA attention rotates q, then k, each with its own negation, concatenation (the
half rotation), two products and a sum against fp32 sin/cos, a cast back and a second
concatenation that puts the prefix tokens (class and register tokens) back: about 14
kernels per block, 336 per ViT-L batch, moving 16 of the 35 GB a bf16 ViT-L moves per
batch of 8 x 512 px on a GPU (BENCHMARKS.md, "What a GPU step moves"). The rotation's
fp32 math is Meta's (``pos_embed_rope_dtype="fp32"``) and is kept exactly: the same fp32
products, the same fp32 sums, rounded once to the activations' dtype. What changes is
the bookkeeping: q and k are rotated together, the half rotation is folded into the
products (``-a * s`` is ``a * -s`` in IEEE arithmetic), the result is written straight
into its final dtype, and the prefix tokens are copied, not concatenated. Outputs are
bit-identical to timm's (tests).

Only eager inference and frozen training take this path; timm's own forward runs
wherever it is traced (``torch.compile``, which fuses the rotation anyway, ONNX and
TorchScript export), where a gradient is needed, and for anything it was not written
for (explicit attention, masks, interleaved rotation, per-sample tables).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from timm.models.eva import EvaAttention
from torch import nn

from faceparse.models.tracing import traced

__all__ = ["FusedRopeAttention", "RopeTables", "fuse_rope", "rotate_qk"]

# once per dtype pair, not an op per block (a dispatch mode sees torch.promote_types)
_promote = functools.cache(torch.promote_types)


@dataclass
class RopeTables:
    """The rotation's factors, built once per RoPE tensor and shared by a ViT's blocks.

    timm builds one ``(tokens, 2 * head_dim)`` [sin | cos] tensor per forward and hands
    the same object to every block; the tables are rebuilt when another object (a new
    input size) or an in-place change (its version counter) comes.
    """

    _source: torch.Tensor | None = field(default=None, repr=False)
    _version: int = -1
    _factors: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = field(
        default=None, repr=False)

    def factors(self, rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``cos``, ``-sin`` of the first half, ``sin`` of the second half."""
        # inference tensors keep no version counter; timm makes a new one per forward
        version = -1 if rope.is_inference() else rope._version
        if self._source is not rope or self._version != version or self._factors is None:
            sin, cos = rope.chunk(2, dim=-1)
            half = sin.shape[-1] // 2
            # a strong reference to ``rope``: no other tensor can take its identity
            self._source, self._version = rope, version
            self._factors = (cos.contiguous(), -sin[:, :half], sin[:, half:].contiguous())
        return self._factors


def rotate_qk(qk: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
              prefix: int, dtype: torch.dtype, upcast: bool | None = None) -> torch.Tensor:
    """Half-rotate the tokens after ``prefix`` of stacked ``(2, B, heads, N, D)`` q and k.

    Computes ``x * cos + rotate_half(x) * sin`` with timm's and Meta's dtype promotion
    (fp32 tables: fp32 products and sum) and rounds once to ``dtype``; the prefix tokens
    are copied unchanged. ``upcast`` casts low-precision tokens to the math dtype first
    and works in place (``None``: on a CPU, whose kernels would cast mixed-dtype inputs
    in passes of their own; a GPU kernel reads them as they are). Both give the same bits.
    """
    cos, neg_sin_first, sin_second = tables
    half = qk.shape[-1] // 2
    patches = qk[..., prefix:, :]
    math_dtype = _promote(qk.dtype, cos.dtype)
    out = torch.empty(qk.shape, dtype=dtype, device=qk.device)
    out[..., :prefix, :].copy_(qk[..., :prefix, :])
    if upcast is None:
        upcast = qk.device.type == "cpu"
    owned = upcast and qk.dtype != math_dtype
    if owned:
        patches = patches.to(math_dtype)
    rotated = torch.empty(patches.shape, dtype=math_dtype, device=qk.device)
    torch.mul(patches[..., half:], neg_sin_first, out=rotated[..., :half])
    torch.mul(patches[..., :half], sin_second, out=rotated[..., half:])
    if owned:  # the cast made a copy of its own: finish in place in it
        out[..., prefix:, :].copy_(patches.mul_(cos).add_(rotated))
    else:
        torch.add(patches * cos, rotated, out=out[..., prefix:, :])
    return out


class FusedRopeAttention(EvaAttention):
    """timm's EVA attention whose eager no-grad forward rotates q and k together.

    Same parameters, buffers and ``state_dict`` keys as the module it was made from
    (:meth:`like`); every case the fast forward does not cover goes to timm's.
    """

    rope_tables: RopeTables

    @classmethod
    def like(cls, attn: EvaAttention, tables: RopeTables) -> FusedRopeAttention:
        """The same attention, holding the same parameter objects under the same names."""
        new = cls.__new__(cls)
        new.__dict__.update(attn.__dict__)
        new.rope_tables = tables
        return new

    def _takes_fast_path(self, x: torch.Tensor, rope: torch.Tensor | None,
                         attn_mask: torch.Tensor | None, is_causal: bool) -> bool:
        if traced() or rope is None or attn_mask is not None or is_causal or not self.fused_attn:
            return False
        if rope.dim() != 2 or rope.shape[-1] != 2 * self.head_dim:
            return False  # per-sample tables (patch dropout) or another layout
        if rope.shape[0] != x.shape[1] - self.num_prefix_tokens:
            return False
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in self.parameters()))
        return not needs_grad

    def _project_qkv(self, x: torch.Tensor) -> torch.Tensor:
        """The qkv projection as timm makes it, its key bias zero.

        With ``qkv_bias_separate`` the bias is added after calling ``qkv``, so a swapped
        projection (dynamic int8, ``scripts/cpu_parts.py``) still serves it.
        """
        if self.q_bias is None:
            return self.qkv(x)
        bias = torch.cat((self.q_bias, self.k_bias, self.v_bias))
        if self.qkv_bias_separate:
            return self.qkv(x) + bias
        return F.linear(x, self.qkv.weight, bias)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if not self._takes_fast_path(x, rope, attn_mask, is_causal):
            return super().forward(x, rope=rope, attn_mask=attn_mask, is_causal=is_causal)
        batch, tokens, channels = x.shape
        qkv = self._project_qkv(x).reshape(batch, tokens, 3, self.num_heads, -1)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, heads, N, head_dim), strided
        qk = rotate_qk(qkv[:2], self.rope_tables.factors(rope), self.num_prefix_tokens,
                       qkv.dtype)
        q, k = qk.unbind(0)
        dropout = self.attn_drop.p if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, qkv[2], dropout_p=dropout)
        x = x.transpose(1, 2).reshape(batch, tokens, channels)
        return self.proj_drop(self.proj(self.norm(x)))


def _fusable(module: nn.Module) -> bool:
    """timm EVA attention in the layout the fast forward handles (DINOv3's)."""
    return (type(module) is EvaAttention and module.qkv is not None
            and getattr(module, "rotate_half", False) and module.gate is None
            and isinstance(module.q_norm, nn.Identity) and isinstance(module.k_norm, nn.Identity))


def fuse_rope(net: nn.Module) -> int:
    """Swap each DINOv3-style attention of ``net`` for :class:`FusedRopeAttention`.

    In place and idempotent; the blocks of one ViT share one :class:`RopeTables`. Returns
    how many attentions were swapped.
    """
    swapped = 0
    for owner in list(net.modules()):
        stack = getattr(owner, "blocks", None)
        if not isinstance(stack, (nn.ModuleList, nn.Sequential)):
            continue
        blocks = [b for b in stack if _fusable(getattr(b, "attn", None))]
        tables = RopeTables()
        for block in blocks:
            block.attn = FusedRopeAttention.like(block.attn, tables)
            swapped += 1
    return swapped
