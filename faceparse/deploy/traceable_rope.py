"""DINOv3 RoPE tables as ops of the input size while a net is traced for export.

timm builds the RoPE coordinate grid from Python numbers (``float(s)`` of each side), so
a trace (ONNX's TorchScript-based exporter, ``torch.jit.trace``) records the tables of the
export size as constants: a ``dynamic`` export then accepts any size but rotates q and k
by the export size's positions, wrong everywhere else. While tracing, a side is a 0-dim
tensor; :func:`traceable_rope` builds the same grid from it with tensor ops, so the
traced graph computes the tables of whatever size it is given. The arithmetic is
timm's (0.5-centred positions over each side, mapped to [-1, 1]), value for value.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from timm.layers.pos_embed_sincos import RotaryEmbeddingDinoV3
from torch import nn

__all__ = ["rope_table", "traceable_rope"]


def _grid_axes(rope: RotaryEmbeddingDinoV3, shape: Sequence[Any]) -> list[torch.Tensor]:
    """Each axis's 0.5-centred positions over its normaliser, as timm's 'centered' grid."""
    sides = [torch.as_tensor(s, dtype=torch.int64) for s in shape]
    if rope.grid_indexing == "xy":
        sides = sides[::-1]
    if rope.normalize_coords == "separate":
        denominators = sides
    elif rope.normalize_coords in ("min", "max"):
        pick = torch.minimum if rope.normalize_coords == "min" else torch.maximum
        denominators = [pick(sides[0], sides[1])] * 2
    else:
        raise ValueError(f"RoPE normalize_coords={rope.normalize_coords!r} is not one "
                         f"timm's DINOv3 grid has")
    return [(torch.arange(side, dtype=torch.float32) + 0.5 + rope.grid_offset)
            / denominator.to(torch.float32)
            for side, denominator in zip(sides, denominators, strict=True)]


def rope_table(rope: RotaryEmbeddingDinoV3, shape: Sequence[Any],
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """``rope.get_embed(shape)`` of an eval-mode DINOv3 RoPE, from ``shape`` by tensor ops."""
    axes = _grid_axes(rope, shape)
    grid = torch.stack(torch.meshgrid(axes, indexing=rope.grid_indexing), dim=-1)
    coords = (2.0 * grid - 1.0).flatten(0, -2)
    sin, cos = rope._get_pos_embed_from_coords(coords)
    table = torch.cat([sin, cos], dim=-1)
    return table if dtype is None else table.to(dtype)


@contextlib.contextmanager
def traceable_rope(net: nn.Module) -> Iterator[None]:
    """Inside: every DINOv3 RoPE of ``net`` builds its tables from the size it is given with
    tensor ops (see the module); outside, timm's own ``get_embed`` again."""
    ropes = [m for m in net.modules() if isinstance(m, RotaryEmbeddingDinoV3)]
    for rope in ropes:
        original = rope.get_embed

        def get_embed(shape=None, dtype=None, rope=rope, original=original):
            if shape is None or (rope.training and rope.aug_active):
                return original(shape, dtype)
            return rope_table(rope, shape, dtype)

        rope.get_embed = get_embed
    try:
        yield
    finally:
        for rope in ropes:
            del rope.get_embed  # the instance attribute: the class's method shows again
