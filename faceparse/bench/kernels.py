"""What the kernels of a profiled step do: matrix work on tensor cores or memory-bound rest.

``torch.profiler`` names each GPU kernel; the name says which library and op made it, so a
few patterns sort them into the classes the profile section reports (BENCHMARKS.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from faceparse.bench.measure import sync

__all__ = ["INDUCTOR_FUSED", "KERNEL_CLASSES", "kernel_breakdown", "kernel_class"]

INDUCTOR_FUSED = "fused by torch.compile (elementwise, norms, reductions)"
# GPU kernel names -> what does the work; first match wins (cuDNN's BatchNorm kernels are
# named cudnn::bn_*: norms come before the matmul/conv class). torch.compile's Triton
# kernels name the ops they fuse (triton_poi_fused_convolution_relu_3 is a conv's bias and
# ReLU, not the conv), so they are sorted by their prefix first: templates (tem) are matmuls
# and convolutions, pointwise/reduction/persistent kernels (poi, red, per) the memory-bound
# rest. On a CPU, inductor's C++ kernels run inside the compiled graph's call.
KERNEL_CLASSES: tuple[tuple[str, str], ...] = (
    ("matmul / conv (tensor cores)", r"^triton_tem_"),
    (INDUCTOR_FUSED, r"^triton_(poi|red|per)_|^## call compiledfxgraph"),
    ("depthwise conv (CUDA cores)", r"depthwise|dwconv"),
    ("attention (flash / SDPA)", r"flash|fmha|attention|sdpa"),
    ("resize (upsample)", r"upsample|interpolat|bilinear"),
    ("batch / layer norm", r"batch_norm|batchnorm|layer_norm|layernorm|welford|bn_"),
    # cuDNN's layout and scaling helpers move memory: not tensor-core work
    ("copy / cast / layout", r"nchwtonhwc|nhwctonchw|scalepackedtensor"),
    ("matmul / conv (tensor cores)",
     r"gemm|cutlass|xmma|wgmma|sm\d{2,3}_|nvjet|cudnn|implicit|fprop|dgrad|wgrad|conv|cublas"
     r"|addmm|::mm$|bmm|matmul|linear"),
    ("optimizer (AdamW)", r"adam|multi_tensor|foreach"),
    ("softmax / cross entropy", r"softmax|nll|cross_entropy|log_softmax"),
    # not "nocast": PyTorch's elementwise kernels run through gpu_kernel_impl_nocast<...>
    ("copy / cast / layout", r"copy|(?<!no)cast|to_|transpose|permute|nchw|nhwc|cat|pad"),
    ("elementwise / reduce", r"elementwise|vectorized|unrolled|reduce|pointwise|triton"),
)


def kernel_class(name: str) -> str:
    """What kind of work a kernel (or CPU op) does, from its name."""
    lowered = name.lower()
    for label, pattern in KERNEL_CLASSES:
        if re.search(pattern, lowered):
            return label
    return "other"


def _self_time_us(event: Any, device: torch.device) -> float:
    if device.type == "cuda":
        return float(getattr(event, "self_device_time_total",
                             getattr(event, "self_cuda_time_total", 0.0)))
    return float(event.self_cpu_time_total)


# the CPU profiler events that do the work (their own time, without their children's)
CPU_KERNEL_PREFIXES = ("aten::", "mkldnn::", "quantized::", "## Call CompiledFxGraph")


def kernel_breakdown(work: Callable[[], Any], device: torch.device, steps: int,
                     top: int = 15) -> dict[str, Any]:
    """``torch.profiler`` over ``steps`` calls: time per kernel class and the top kernels.

    On a GPU these are CUDA kernels; on a CPU (where there are none) the ops' own time
    stands in (``aten::``, and ``mkldnn::`` for the fused convolution + ReLU predict runs),
    and a compiled graph's own time for the C++ kernels it runs, so the section runs
    everywhere.
    """
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    work()
    sync(device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            work()
        sync(device)
    rows = []
    for event in prof.key_averages():
        is_kernel = (str(getattr(event, "device_type", "")).endswith("CUDA")
                     if device.type == "cuda"
                     else event.key.startswith(CPU_KERNEL_PREFIXES))
        us = _self_time_us(event, device)
        if is_kernel and us > 0:
            rows.append((event.key, us / steps / 1e3, event.count // steps))
    total = sum(ms for _, ms, _ in rows) or 1.0
    classes: dict[str, float] = {}
    for name, ms, _ in rows:
        classes[kernel_class(name)] = classes.get(kernel_class(name), 0.0) + ms
    rows.sort(key=lambda r: r[1], reverse=True)
    return {
        "kernel_ms_per_step": total,
        "classes": {k: {"ms": v, "share": v / total}
                    for k, v in sorted(classes.items(), key=lambda kv: -kv[1])},
        "top": [{"kernel": name[:120], "class": kernel_class(name), "ms": ms, "calls": calls,
                 "share": ms / total} for name, ms, calls in rows[:top]],
    }
