"""``run_stats.json``: the per-run facts a sweep report compares and no logger records.

Parameter counts (total, trainable), training throughput (images/s over the training
batches, validation excluded; a resumed run adds its earlier attempts' recorded batches)
and peak memory (CUDA allocator peak on a GPU, the process's peak resident memory on a
CPU). Written by rank 0 when fitting ends.

Both peaks are reset when fitting starts: a sweep runs its jobs one after another in one
process, and a job's peak must not be the largest of the jobs before it. On Linux the
resident peak (``VmHWM``) is reset through ``/proc/self/clear_refs``; where it cannot be,
the process's whole-life peak is recorded under its own name (``process_max_rss``).
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from faceparse.data.io import write_atomic

__all__ = ["RunStats", "peak_memory_mb"]


PROC_SELF = Path("/proc/self")


def reset_peak_rss() -> bool:
    """Reset this process's peak resident memory (Linux: ``5`` to ``clear_refs``); whether
    it was reset."""
    try:
        (PROC_SELF / "clear_refs").write_text("5")
    except OSError:
        return False
    return _vm_hwm_kib() is not None


def _vm_hwm_kib() -> int | None:
    """``VmHWM`` of ``/proc/self/status``: the peak resident memory since the last reset."""
    try:
        status = (PROC_SELF / "status").read_text()
    except OSError:
        return None
    line = next((ln for ln in status.splitlines() if ln.startswith("VmHWM:")), None)
    return int(line.split()[1]) if line else None


def peak_memory_mb(device: torch.device, rss_reset: bool = False) -> tuple[float, str]:
    """Peak memory in MiB and what it measures; ``rss_reset``: :func:`reset_peak_rss`
    succeeded when the measured work began."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    if rss_reset and (hwm := _vm_hwm_kib()) is not None:
        return hwm / 2**10, "process_peak_rss_since_fit_start"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "process_max_rss"


def _earlier_training(path: Path) -> tuple[int, float]:
    """Images and seconds an earlier attempt of this run recorded; none without a
    readable record (a run started from another run's checkpoint has none here)."""
    try:
        earlier = json.loads(path.read_text())
        return int(earlier["train_images"]), float(earlier["train_seconds"])
    except (OSError, ValueError, TypeError, KeyError):
        return 0, 0.0


class RunStats(L.Callback):
    """Count parameters, time training batches, write ``<dirpath>/run_stats.json``."""

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)
        self.images = 0
        self.seconds = 0.0
        self._batch_start = 0.0
        self._rss_reset = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path:  # a resumed run: its earlier attempts' batches count too
            self.images, self.seconds = _earlier_training(self.dirpath / "run_stats.json")
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        else:
            self._rss_reset = reset_peak_rss()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.seconds += time.perf_counter() - self._batch_start
        self.images += int(batch["image"].shape[0]) * trainer.world_size

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        """A job that failed or was interrupted (SIGTERM, out of memory) keeps its figures:
        its peak memory is the one a sweep most needs to see."""
        if trainer.state.fn == "fit":
            try:
                self.on_fit_end(trainer, pl_module)
            except OSError as err:  # never hide the job's own error behind this one
                logging.getLogger(__name__).warning("run_stats.json not written: %s", err)

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        params = list(pl_module.parameters())
        peak, measure = peak_memory_mb(pl_module.device, self._rss_reset)
        stats = {
            "params_total": sum(p.numel() for p in params),
            "params_trainable": sum(p.numel() for p in params if p.requires_grad),
            "train_images": self.images,
            "train_seconds": round(self.seconds, 3),
            "train_images_per_s": self.images / self.seconds if self.seconds else None,
            "peak_memory_mb": round(peak, 1),
            "peak_memory_measure": measure,
            "device": str(pl_module.device),
        }
        # atomic: a sweep report may read it while the job is still testing
        write_atomic(self.dirpath / "run_stats.json", json.dumps(stats, indent=2).encode())
