"""An inference-only rewrite for CPUs: each convolution followed by a ReLU runs as one
oneDNN call with the ReLU as its post-op, instead of a convolution and then a pass of its own.

On a 2-core AMX Xeon the separate ReLU was 25-30% of a bf16 3x3 convolution at 64
channels and 512 px (BENCHMARKS.md); fusing it gives the same bits. The op is oneDNN's
through PyTorch (``torch.ops.mkldnn._convolution_pointwise``, what inductor fuses into on
a CPU), so a tiny probe checks it once per process: where it is missing, changed or
wrong, nothing is rewritten and the reason is logged. On other devices, under a tracer
(``torch.compile``, export), or wherever a gradient is wanted, the plain convolution and
ReLU run.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import nn

from faceparse.models.blocks import ConvBNReLU, DepthwiseSeparableConv
from faceparse.models.tracing import traced

__all__ = ["ConvReLU", "fuse_conv_relu", "fused_conv_relu_works"]

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
            dtype = torch.get_autocast_dtype("cpu")
            return dtype if x.is_floating_point() and dtype == torch.bfloat16 else None
        return x.dtype if x.dtype in (torch.float32, torch.bfloat16) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self._compute_dtype(x)
        if dtype is None or not torch.backends.mkldnn.enabled:
            return F.relu(super().forward(x))
        return _fused(x, self, dtype)


def _rewritable(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str))


@functools.cache
def fused_conv_relu_works() -> str | None:
    """``None`` where oneDNN's fused convolution + ReLU gives the plain one's values, else why not.

    A few milliseconds, once per process, on tensors of the shapes and layouts the net uses.
    """
    if not torch.backends.mkldnn.is_available():
        return "PyTorch was built without oneDNN"
    if not hasattr(torch.ops.mkldnn, "_convolution_pointwise"):
        return "this PyTorch has no mkldnn._convolution_pointwise"
    generator = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    try:
        with torch.no_grad():
            for layout in (torch.contiguous_format, torch.channels_last):
                conv.to(memory_format=layout)
                x = torch.randn(2, 8, 12, 12, generator=generator).to(memory_format=layout)
                expected = F.relu(conv(x))
                torch.testing.assert_close(_fused(x, conv, torch.float32), expected,
                                           atol=1e-5, rtol=1e-4)
    except Exception as error:  # noqa: BLE001 - any failure means: keep the plain path
        return f"oneDNN's fused convolution + ReLU failed its probe ({error})"
    return None


def _swap(owner: nn.Module, conv_name: str, relu_name: str) -> bool:
    conv, relu = getattr(owner, conv_name), getattr(owner, relu_name)
    if not (_rewritable(conv) and isinstance(relu, nn.ReLU)):
        return False
    setattr(owner, conv_name, ConvReLU.like(conv))
    setattr(owner, relu_name, nn.Identity())
    return True


def fuse_conv_relu(net: nn.Module) -> int:
    """Make each convolution that a ReLU directly follows a :class:`ConvReLU`; return how many.

    "Directly" counts a folded BatchNorm's ``Identity`` between them, so fold BatchNorm
    first (:func:`faceparse.inference.fold.fold_batchnorm`): an unfolded BatchNorm between
    a convolution and its ReLU keeps the pair apart. Covers ``Sequential`` runs
    (torchvision's VGG features) and the decoder's blocks. Returns 0, logging why, where
    oneDNN's fused call is unavailable.
    """
    problem = fused_conv_relu_works()
    if problem is not None:
        log.info("convolutions and ReLUs left apart: %s", problem)
        return 0
    fused = 0
    for module in list(net.modules()):
        if isinstance(module, ConvBNReLU) and isinstance(module.bn, nn.Identity):
            fused += _swap(module, "conv", "act")
        elif isinstance(module, DepthwiseSeparableConv) and isinstance(module.bn, nn.Identity):
            fused += _swap(module, "pointwise", "act")
        elif isinstance(module, nn.Sequential):
            names = [name for name, m in module.named_children() if not isinstance(m, nn.Identity)]
            for first, second in zip(names, names[1:], strict=False):
                fused += _swap(module, first, second)
    return fused
