"""OmegaConf resolvers the configs use, so derived values are never typed twice."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from faceparse.labels import get_scheme

__all__ = ["register_resolvers", "auto_precision"]


def auto_precision(accelerator: str = "auto") -> str:
    """bf16 mixed precision on a GPU that supports it, fp32 otherwise.

    CPUs without AMX/AVX-512-BF16 run bf16 matmuls ~100x slower than fp32, so the CPU
    never gets bf16 by default.
    """
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"


def register_resolvers() -> None:
    """``${num_classes:<scheme>}`` and ``${auto_precision:<accelerator>}``; idempotent."""
    OmegaConf.register_new_resolver(
        "num_classes", lambda scheme: get_scheme(scheme).num_classes, replace=True
    )
    OmegaConf.register_new_resolver("auto_precision", auto_precision, replace=True)
