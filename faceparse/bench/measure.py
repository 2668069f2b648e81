"""What every figure needs beside it: device sync, peak memory, and the machine it came from.

Peak memory is ``torch.cuda.max_memory_allocated`` on a GPU. The CPU allocator keeps no
peak, so on a CPU it is the process's resident set, sampled every 5 ms (freed memory the C
allocator keeps counts too: run one section at a time for clean figures).
"""

from __future__ import annotations

import os
import platform
import threading
from pathlib import Path
from typing import Any

import lightning as L
import timm
import torch

from faceparse.fast_path import inference_bf16
from faceparse.hardware import cpu_info, cpu_policy
from faceparse.option_values import boolean

__all__ = ["PeakMemory", "bench_bf16", "machine", "rss_bytes", "sync"]


def rss_bytes() -> int:
    """This process's resident set in bytes (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bench_bf16(cfg: Any, device: str | torch.device) -> bool:
    """Whether a section's inference runs in bf16 autocast: ``bench.bf16``, or where faster
    (null), as ``faceparse.predict`` decides."""
    if cfg.bench.bf16 is None:
        return inference_bf16(device)
    return boolean("bench.bf16", cfg.bench.bf16)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer stops when the work does."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of a block in MiB: CUDA allocator peak, or sampled CPU resident set."""

    def __init__(self, device: torch.device, interval_s: float = 0.005) -> None:
        self.device = device
        self.interval_s = interval_s
        self.peak = 0
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def method(self) -> str:
        return "cuda max_memory_allocated" if self.device.type == "cuda" else "cpu rss sampled"

    @property
    def mib(self) -> float:
        return self.peak / 2**20

    def _sample(self) -> None:
        while not self._done.wait(self.interval_s):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak = rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._done.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes())


def machine() -> dict[str, Any]:
    """What the figures came from: CPU, usable cores, threads, library versions, GPU."""
    cpu, policy = cpu_info(), cpu_policy()
    info = {"cpu": cpu.model, "cpu_flags": " ".join(cpu.flags) or "-",
            "torch_cpu_kernels": cpu.torch_capability,
            "cpu_policy": f"bf16={policy.bf16} channels_last={policy.channels_last} "
                          f"({policy.reason})",
            "cores_usable": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "timm": timm.__version__, "lightning": L.__version__,
            "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info
