"""How far an MFU target is: the ceiling the matrix kernels allow, and the time left over.

A step's model FLOPs are done by its tensor-core matmuls and convolutions and by attention;
every other kernel (normalisation, elementwise, copies, resizing) and every idle gap only
adds time. Fusion can shorten those, never the matrix kernels themselves, so their time
bounds MFU from above. A target MFU then leaves a fixed budget for everything else, to
set against what everything else takes today (BENCHMARKS.md, "How far the MFU targets are").
"""

from __future__ import annotations

from typing import Any

__all__ = ["MATRIX_CLASSES", "MFU_TARGETS", "format_ceiling", "mfu_ceiling"]

# the kernel classes (faceparse.bench.kernels) that do the model's FLOPs at tensor-core speed
MATRIX_CLASSES = ("matmul / conv (tensor cores)", "attention (flash / SDPA)")
# issue 15's targets: bf16 at 512 px on an H100/H200
MFU_TARGETS = {"train": 0.30, "infer": 0.40}


def mfu_ceiling(part: dict[str, Any], flops_per_image: float, batch_size: int,
                peak_tflops: float | None, target: float) -> dict[str, Any]:
    """The matrix kernels' share of a profiled step, the MFU they cap, the rest's budget.

    ``part`` is one mode of the profile section (``whole_ms`` and ``kernels``). Without a
    peak (a CPU) only the times are given: ``ceiling_mfu`` and ``rest_budget_ms`` are None.
    ``rest_ms`` is the whole step less the matrix kernels: other kernels *and* idle gaps.
    The kernels are timed in a profiled run and the whole step in an unprofiled one; where
    profiler overhead or noise makes the matrix kernels alone outlast the whole step (a
    CPU, whose ops are mostly matrix work), the difference means nothing: ``rest_ms`` is
    None then, never a negative time.
    """
    classes = part["kernels"]["classes"]
    matrix_ms = sum(classes[name]["ms"] for name in MATRIX_CLASSES if name in classes)
    rest_ms = part["whole_ms"] - matrix_ms
    result: dict[str, Any] = {"matrix_ms": matrix_ms, "rest_ms": rest_ms if rest_ms > 0 else None,
                              "target_mfu": target, "ceiling_mfu": None,
                              "rest_budget_ms": None}
    if peak_tflops and matrix_ms > 0:
        work_tflop = flops_per_image * batch_size / 1e12
        result["ceiling_mfu"] = work_tflop / (matrix_ms / 1e3) / peak_tflops
        result["rest_budget_ms"] = work_tflop / (target * peak_tflops) * 1e3 - matrix_ms
    return result


def format_ceiling(ceiling: dict[str, Any]) -> str:
    """One sentence: the matrix kernels' time, the MFU it caps, the rest against its budget."""
    rest = ceiling["rest_ms"]
    text = (f"matrix kernels (tensor-core matmul/conv, attention) {ceiling['matrix_ms']:.2f} ms, "
            + (f"everything else (other kernels and idle gaps) {rest:.2f} ms" if rest is not None
               else "everything else unknown (the profiled matrix kernels outlasted the "
                    "unprofiled step: profiler overhead or noise)"))
    if ceiling["ceiling_mfu"] is None:
        return text + "; no peak TFLOP/s for this device, so no MFU ceiling"
    budget = ceiling["rest_budget_ms"]
    verdict = (f"leaves {budget:.2f} ms for everything else" if budget > 0
               else f"is out of reach even if nothing else ran ({-budget:.2f} ms short)")
    return (text + f"; MFU ceiling {ceiling['ceiling_mfu']:.1%} if nothing else ran; "
            f"the {ceiling['target_mfu']:.0%} target {verdict}")
