"""How a net runs on the hardware at hand: precision, memory format, cuDNN, compilation.

Training (the LightningModule's ``setup``) and inference (``prepare_for_inference``) take
their speed options from :class:`FastPath`, so what the bench measures is what both use.
channels_last and cuDNN autotuning pay on CUDA only and are left alone on a CPU; bf16 is
the default precision only on a GPU that supports it (CPUs without AMX/AVX-512-BF16 run
bf16 matmuls ~100x slower than fp32). Figures: BENCHMARKS.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["FastPath", "auto_precision", "on_gpu"]


def on_gpu(accelerator: str) -> bool:
    """Whether a Lightning ``accelerator`` setting runs on a CUDA GPU here."""
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def auto_precision(accelerator: str = "auto") -> str:
    """bf16 mixed precision on a GPU that supports it, fp32 otherwise (never bf16 on a CPU)."""
    return "bf16-mixed" if on_gpu(accelerator) and torch.cuda.is_bf16_supported() else "32-true"


@dataclass(frozen=True)
class FastPath:
    """Speed options for a net on a device.

    Args:
        channels_last: NHWC weights and activations for the convolutions (CUDA only).
        cudnn_benchmark: let cuDNN time its convolution algorithms once per input shape
            (CUDA only; a process-wide setting). Pays when shapes repeat.
        compile: ``torch.compile`` each part of the net in place (slow first steps, then
            faster; state_dict keys unchanged, and ``forward_with_aux`` is covered too).
    """

    channels_last: bool = True
    cudnn_benchmark: bool = True
    compile: bool = False

    def apply(self, net: nn.Module, device: str | torch.device) -> nn.Module:
        """Switch the options on for ``net`` (in place, once) as they pay on ``device``."""
        if torch.device(device).type == "cuda":
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
            if self.channels_last:  # kept by a later move to the GPU
                net.to(memory_format=torch.channels_last)
        if self.compile:
            for part in net.children():
                part.compile()
        return net
