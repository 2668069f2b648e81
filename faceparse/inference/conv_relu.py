"""An inference-only rewrite: each convolution followed by a ReLU runs as one library call
with the ReLU applied as the convolution writes its output, instead of a pass of its own.

On a CPU the call is oneDNN's (``torch.ops.mkldnn._convolution_pointwise``, what inductor
fuses into there): on a 2-core AMX Xeon the separate ReLU was 25-30% of a bf16 3x3
convolution at 64 channels and 512 px, and fusing it gives the same bits (BENCHMARKS.md).
On CUDA it is cuDNN's (``torch.cudnn_convolution_relu``: bias and ReLU in the
convolution's epilogue), opt-in (``fast_path.fuse_conv_relu=true``) until a GPU has
measured it: the MFU ceiling of issue 15 needs the ReLU passes gone from inference
(BENCHMARKS.md, "How far the MFU targets are"). It also runs under ``torch.compile``,
which has no fused convolution of its own there (a meta kernel gives its output's shape
and strides, and inductor calls it as an extern kernel); on a CPU inductor fuses the plain
ops itself. A tiny probe checks the call once per process, device type and dtype: where
it is missing, changed or wrong, the plain ops run and the reason is logged. Under an
exporter, wherever a gradient is wanted, and on other devices the plain convolution and
ReLU run.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from faceparse.inference.fold import successive_children
from faceparse.models.tracing import exported, traced

__all__ = ["ConvReLU", "fuse_conv_relu", "fused_conv_relu_dtypes", "register_cudnn_conv_relu_meta"]

log = logging.getLogger(__name__)

FusedCall = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", nn.Conv2d],
                     torch.Tensor]


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            conv: nn.Conv2d) -> torch.Tensor:
    return torch.ops.mkldnn._convolution_pointwise(
        x, weight, bias, list(conv.padding), list(conv.stride), list(conv.dilation),
        conv.groups, "relu", [None], "")


def _cudnn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
           conv: nn.Conv2d) -> torch.Tensor:
    return torch.cudnn_convolution_relu(x, weight, bias, conv.stride, conv.padding,
                                        conv.dilation, conv.groups)


def _onednn_missing() -> str | None:
    if not torch.backends.mkldnn.is_available():
        return "PyTorch was built without oneDNN"
    if not hasattr(torch.ops.mkldnn, "_convolution_pointwise"):
        return "this PyTorch has no mkldnn._convolution_pointwise"
    return None


def _cudnn_missing() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device"
    if not torch.backends.cudnn.is_available():
        return "PyTorch was built without cuDNN"
    if not hasattr(torch, "cudnn_convolution_relu"):
        return "this PyTorch has no cudnn_convolution_relu"
    return None


@dataclass(frozen=True)
class _Backend:
    """One device type's fused call: its library, what it can run in, whether it is on."""

    library: str
    call: FusedCall
    dtypes: tuple[torch.dtype, ...]
    missing: Callable[[], str | None]
    enabled: Callable[[], bool]
    # fp32 on CUDA may run as TF32, and the fused and plain calls may pick other algorithms
    fp32_tolerance: tuple[float, float]


_BACKENDS = {
    "cpu": _Backend("oneDNN", _onednn, (torch.float32, torch.bfloat16), _onednn_missing,
                    lambda: torch.backends.mkldnn.enabled, (1e-5, 1e-4)),
    "cuda": _Backend("cuDNN", _cudnn, (torch.float32, torch.bfloat16, torch.float16),
                     _cudnn_missing, lambda: torch.backends.cudnn.enabled, (2e-3, 2e-3)),
}


def _fused(x: torch.Tensor, conv: nn.Conv2d, dtype: torch.dtype) -> torch.Tensor:
    weight, bias = conv.weight, conv.bias
    if x.dtype != dtype:
        x = x.to(dtype)
    if weight.dtype != dtype:  # what autocast would cast, cast the same way
        weight = weight.to(dtype)
    if bias is not None and bias.dtype != dtype:
        bias = bias.to(dtype)
    return _BACKENDS[x.device.type].call(x, weight, bias, conv)


class ConvReLU(nn.Conv2d):
    """A ``Conv2d`` whose output goes through a ReLU, fused on one device type where it can.

    Made with :meth:`like`: the same parameter objects under the same names, and the
    device type and dtypes whose probe the fused call passed.
    """

    fused_on = "cpu"
    fused_dtypes: frozenset[torch.dtype] = frozenset()

    @classmethod
    def like(cls, conv: nn.Conv2d, device_type: str = "cpu",
             dtypes: frozenset[torch.dtype] | None = None) -> ConvReLU:
        """``conv`` fused on ``device_type`` in ``dtypes`` (default: those its probe passed)."""
        new = cls.__new__(cls)
        new.__dict__.update(conv.__dict__)
        new.fused_on = device_type
        new.fused_dtypes = fused_conv_relu_dtypes(device_type)[0] if dtypes is None else dtypes
        return new

    def _compute_dtype(self, x: torch.Tensor) -> torch.dtype | None:
        """The dtype the fused call runs in, or ``None`` where it should not run."""
        device_type = x.device.type
        if device_type != self.fused_on or x.dim() != 4:
            return None
        if exported() or (traced() and not _compiles_fused(device_type)):
            return None
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return None
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type) if x.is_floating_point() else None
        else:
            dtype = x.dtype
        return dtype if dtype in self.fused_dtypes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self._compute_dtype(x)
        if dtype is None or not _BACKENDS[x.device.type].enabled():
            return F.relu(super().forward(x))
        return _fused(x, self, dtype)


def _compiles_fused(device_type: str) -> bool:
    """Whether ``torch.compile`` should keep the fused call: on CUDA, where inductor has no
    fused convolution of its own; on a CPU it fuses the plain ops into oneDNN's itself."""
    return device_type == "cuda"


def _conv_output_meta(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      stride: list[int], padding: list[int], dilation: list[int],
                      groups: int) -> torch.Tensor:
    """``cudnn_convolution_relu``'s output, shape and strides only (for fake tensors).

    cuDNN writes NHWC where the input or the weight is NHWC, as PyTorch's
    ``cudnn_conv_suggest_memory_format`` chooses; inductor checks these strides against
    the real output's at run time.
    """
    spatial = [(size + 2 * pad - dil * (k - 1) - 1) // step + 1
               for size, pad, dil, k, step in zip(x.shape[2:], padding, dilation,
                                                  weight.shape[2:], stride, strict=True)]
    nhwc = any(t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
               for t in (x, weight))
    return torch.empty((x.shape[0], weight.shape[0], *spatial), dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last if nhwc else torch.contiguous_format)


_ATEN_IMPLS: list[torch.library.Library] = []


@functools.cache
def register_cudnn_conv_relu_meta() -> bool:
    """Give ``aten::cudnn_convolution_relu`` a meta kernel where PyTorch has none.

    Tracers and fake tensors (``torch.compile``, the bench's census) need one; PyTorch
    registers none for this op. Returns whether the op has one now.
    """
    name = "aten::cudnn_convolution_relu"
    if not hasattr(torch.ops.aten, "cudnn_convolution_relu"):
        return False
    if not torch._C._dispatch_has_kernel_for_dispatch_key(name, "Meta"):
        library = torch.library.Library("aten", "IMPL")
        library.impl("cudnn_convolution_relu", _conv_output_meta, "Meta")
        _ATEN_IMPLS.append(library)  # a registration lasts as long as its Library object
    return True


def _rewritable(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str))


def _probe(device_type: str, dtype: torch.dtype) -> str | None:
    """``None`` where the fused call gives the plain ops' values in ``dtype``, else why not."""
    backend = _BACKENDS[device_type]
    generator = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1).to(device_type, dtype)
    atol, rtol = backend.fp32_tolerance
    tolerance = {"atol": atol, "rtol": rtol} if dtype == torch.float32 else {}
    try:
        with torch.no_grad():
            for layout in (torch.contiguous_format, torch.channels_last):
                conv.to(memory_format=layout)
                x = torch.randn(2, 8, 12, 12, generator=generator).to(
                    device_type, dtype, memory_format=layout)
                torch.testing.assert_close(_fused(x, conv, dtype), F.relu(conv(x)), **tolerance)
    except Exception as error:  # noqa: BLE001 - any failure means: keep the plain path
        return (f"{backend.library}'s fused convolution + ReLU failed its {dtype} probe "
                f"({error})")
    return None


@functools.cache
def fused_conv_relu_dtypes(device_type: str = "cpu"
                           ) -> tuple[frozenset[torch.dtype], tuple[str, ...]]:
    """The dtypes in which the fused call gives the plain ops' values, and why not others.

    A small convolution in each layout, once per process and device type (milliseconds).
    bf16 fails on a CPU whose oneDNN has no bf16 convolution (AVX2 only): fp32 is then
    fused alone.
    """
    backend = _BACKENDS.get(device_type)
    if backend is None:
        return frozenset(), (f"no fused convolution + ReLU for {device_type} devices",)
    if (missing := backend.missing()) is not None:
        return frozenset(), (missing,)
    problems = {dtype: _probe(device_type, dtype) for dtype in backend.dtypes}
    return (frozenset(d for d, problem in problems.items() if problem is None),
            tuple(problem for problem in problems.values() if problem is not None))


def _swap(owner: nn.Module, conv_name: str, relu_name: str, device_type: str,
          dtypes: frozenset[torch.dtype]) -> bool:
    conv, relu = getattr(owner, conv_name), getattr(owner, relu_name)
    if not (_rewritable(conv) and isinstance(relu, nn.ReLU)):
        return False
    setattr(owner, conv_name, ConvReLU.like(conv, device_type, dtypes))
    setattr(owner, relu_name, nn.Identity())
    return True


def fuse_conv_relu(net: nn.Module, device_type: str = "cpu") -> int:
    """Make each convolution that a ReLU directly follows a :class:`ConvReLU`; return how many.

    They fuse on ``device_type`` (``"cpu"``: oneDNN, ``"cuda"``: cuDNN) and run the plain
    ops anywhere else. "Directly" is :func:`~faceparse.inference.fold.successive_children`'s,
    which skips a folded BatchNorm's ``Identity``, so fold BatchNorm first: an unfolded
    BatchNorm between a convolution and its ReLU keeps the pair apart. Returns 0, logging
    why, where the fused call works in no dtype; a dtype it fails in runs the plain ops.
    """
    dtypes, problems = fused_conv_relu_dtypes(device_type)
    if problems:
        log.info("convolutions and ReLUs left apart on %s %s: %s", device_type,
                 "in every dtype" if not dtypes else "except in "
                 + ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes)),
                 "; ".join(problems))
    if not dtypes:
        return 0
    if _compiles_fused(device_type):
        register_cudnn_conv_relu_meta()
    return sum(_swap(*pair, device_type, dtypes) for pair in successive_children(net))
