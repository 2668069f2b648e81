"""Stand-ins for the GPU kernels that fake CUDA tensors cannot run, counted as a GPU runs them.

The census (:mod:`faceparse.bench.census`) runs a step on fake CUDA tensors, with no GPU.
Where PyTorch would run another path there than a GPU does (SDPA falls back to fp32
math), these record what the GPU's kernel reads and writes, and hand back an empty tensor
of the shape, dtype and layout the kernel would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

__all__ = ["Recorder", "dtype_names", "fused_attention", "heads_last_but_one", "nbytes"]


class Recorder(Protocol):
    """Where a stand-in counts its kernel: the census."""

    def record(self, kind: str, op: str, dtype: str, nbytes: int) -> None: ...


def dtype_names(dtypes: set[torch.dtype]) -> str:
    return ",".join(sorted(str(d).removeprefix("torch.") for d in dtypes)) or "-"


def nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def heads_last_but_one(like: torch.Tensor, width: int) -> torch.Tensor:
    """An empty (B, heads, tokens, ``width``) tensor laid out (B, tokens, heads, width).

    Flash and cuDNN attention allocate their outputs and gradients so, and a ViT's
    ``transpose(1, 2).reshape(B, N, C)`` after them is then a view, not a copy.
    """
    if like.dim() != 4:
        return like.new_empty((*like.shape[:-1], width))
    b, h, n, _ = like.shape
    return like.new_empty((b, n, h, width)).transpose(1, 2)


def fused_attention(census: Recorder) -> Callable[..., torch.Tensor]:
    """A stand-in for ``F.scaled_dot_product_attention`` as a GPU runs it.

    Without a GPU, SDPA on fake CUDA tensors falls back to its math path (fp32 matmuls
    and softmax), which a GPU would not run: flash and cuDNN attention read q, k, v and
    write the output once, in bf16 under autocast. This counts that instead.
    """

    class FusedAttention(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            out = heads_last_but_one(q, v.shape[-1])
            census.record("attention", "fused attention", dtype_names({q.dtype}),
                          nbytes(q, k, v, out))
            ctx.save_for_backward(q, k, v, out)
            return out

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
            q, k, v, out = ctx.saved_tensors
            grads = tuple(heads_last_but_one(t, t.shape[-1]) for t in (q, k, v))
            census.record("attention", "fused attention backward", dtype_names({q.dtype}),
                          nbytes(q, k, v, out, grad, *grads))
            return grads

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *_: Any,
                  **__: Any) -> torch.Tensor:
        if torch.is_autocast_enabled("cuda"):  # SDPA is on autocast's lower-precision list
            dtype = torch.get_autocast_dtype("cuda")
            q, k, v = (t.to(dtype) for t in (q, k, v))
        return FusedAttention.apply(q, k, v)

    return attention
