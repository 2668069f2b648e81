"""Whether a tracer is looking: eager-only fast paths step aside for it.

A hand-fused eager kernel (:mod:`faceparse.models.rope_attention`,
:mod:`faceparse.inference.conv_relu`) hides its math from ``torch.compile``, which fuses
the plain ops better, and from exporters, which need standard ops.
"""

from __future__ import annotations

import torch

__all__ = ["exported", "traced"]


def exported() -> bool:
    """Whether an exporter (torch.export, ONNX or TorchScript) is tracing: standard ops only."""
    return (torch.compiler.is_exporting() or torch.jit.is_tracing() or torch.jit.is_scripting()
            or torch.onnx.is_in_onnx_export())


def traced() -> bool:
    """Whether a tracer (dynamo, torch.export, ONNX or TorchScript export) is running."""
    return torch.compiler.is_compiling() or exported()
