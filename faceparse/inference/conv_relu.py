"""An inference-only rewrite for CPUs: each convolution followed by a ReLU runs as one
oneDNN call with the ReLU as its post-op, instead of a convolution and then a pass of its own.

On a 2-core AMX Xeon the separate ReLU was 25-30% of a bf16 3x3 convolution at 64
channels and 512 px (BENCHMARKS.md); fusing it gives the same bits. The op is oneDNN's
through PyTorch (``torch.ops.mkldnn._convolution_pointwise``, what inductor fuses into on
a CPU), so a tiny probe checks it once per process and dtype: where it is missing,
changed or wrong, the plain ops run and the reason is logged. On other devices, under a tracer
(``torch.compile``, export), or wherever a gradient is wanted, the plain convolution and
ReLU run.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import nn

from faceparse.inference.fold import successive_children
from faceparse.models.tracing import traced

__all__ = ["ConvReLU", "fuse_conv_relu", "fused_conv_relu_dtypes"]

log = logging.getLogger(__name__)


def _fused(x: torch.Tensor, conv: nn.Conv2d, dtype: torch.dtype) -> torch.Tensor:
    weight, bias = conv.weight, conv.bias
    if x.dtype != dtype:
        x = x.to(dtype)
    if weight.dtype != dtype:  # what CPU autocast would cast, cast the same way
        weight = weight.to(dtype)
    if bias is not None and bias.dtype != dtype:
        bias = bias.to(dtype)
    return torch.ops.mkldnn._convolution_pointwise(
        x, weight, bias, list(conv.padding), list(conv.stride), list(conv.dilation),
        conv.groups, "relu", [None], "")


class ConvReLU(nn.Conv2d):
    """A ``Conv2d`` whose output goes through a ReLU, fused on a CPU where oneDNN can.

    Made with :meth:`like`: the same parameter objects under the same names.
    """

    @classmethod
    def like(cls, conv: nn.Conv2d) -> ConvReLU:
        new = cls.__new__(cls)
        new.__dict__.update(conv.__dict__)
        return new

    def _compute_dtype(self, x: torch.Tensor) -> torch.dtype | None:
        """The dtype the fused call runs in, or ``None`` where it should not run."""
        if x.device.type != "cpu" or x.dim() != 4 or traced():
            return None
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return None
        if torch.is_autocast_enabled("cpu"):
            dtype = torch.get_autocast_dtype("cpu") if x.is_floating_point() else None
        else:
            dtype = x.dtype
        return dtype if dtype in fused_conv_relu_dtypes()[0] else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self._compute_dtype(x)
        if dtype is None or not torch.backends.mkldnn.enabled:
            return F.relu(super().forward(x))
        return _fused(x, self, dtype)


def _rewritable(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str))


def _probe(dtype: torch.dtype) -> str | None:
    """``None`` where the fused call gives the plain ops' values in ``dtype``, else why not."""
    generator = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1).to(dtype)
    tolerance = {"atol": 1e-5, "rtol": 1e-4} if dtype == torch.float32 else {}
    try:
        with torch.no_grad():
            for layout in (torch.contiguous_format, torch.channels_last):
                conv.to(memory_format=layout)
                x = torch.randn(2, 8, 12, 12, generator=generator).to(dtype, memory_format=layout)
                torch.testing.assert_close(_fused(x, conv, dtype), F.relu(conv(x)), **tolerance)
    except Exception as error:  # noqa: BLE001 - any failure means: keep the plain path
        return f"oneDNN's fused convolution + ReLU failed its {dtype} probe ({error})"
    return None


@functools.cache
def fused_conv_relu_dtypes() -> tuple[frozenset[torch.dtype], tuple[str, ...]]:
    """The dtypes in which oneDNN's fused call gives the plain ops' values, and why not others.

    A small convolution in each layout, once per process (milliseconds). bf16 fails where
    oneDNN has no bf16 convolution on this CPU (AVX2 only): fp32 is then fused alone.
    """
    if not torch.backends.mkldnn.is_available():
        return frozenset(), ("PyTorch was built without oneDNN",)
    if not hasattr(torch.ops.mkldnn, "_convolution_pointwise"):
        return frozenset(), ("this PyTorch has no mkldnn._convolution_pointwise",)
    problems = {dtype: _probe(dtype) for dtype in (torch.float32, torch.bfloat16)}
    return (frozenset(d for d, problem in problems.items() if problem is None),
            tuple(problem for problem in problems.values() if problem is not None))


def _swap(owner: nn.Module, conv_name: str, relu_name: str) -> bool:
    conv, relu = getattr(owner, conv_name), getattr(owner, relu_name)
    if not (_rewritable(conv) and isinstance(relu, nn.ReLU)):
        return False
    setattr(owner, conv_name, ConvReLU.like(conv))
    setattr(owner, relu_name, nn.Identity())
    return True


def fuse_conv_relu(net: nn.Module) -> int:
    """Make each convolution that a ReLU directly follows a :class:`ConvReLU`; return how many.

    "Directly" is :func:`~faceparse.inference.fold.successive_children`'s, which skips a
    folded BatchNorm's ``Identity``, so fold BatchNorm first: an unfolded BatchNorm between
    a convolution and its ReLU keeps the pair apart. Returns 0, logging why, where
    oneDNN's fused call works in no dtype; a dtype it fails in runs the plain ops.
    """
    dtypes, problems = fused_conv_relu_dtypes()
    if problems:
        log.info("convolutions and ReLUs left apart %s: %s",
                 "in every dtype" if not dtypes else "except in "
                 + ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes)),
                 "; ".join(problems))
    if not dtypes:
        return 0
    return sum(_swap(*pair) for pair in successive_children(net))
