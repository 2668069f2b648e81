"""``run_stats.json``: the per-run facts a sweep report compares and no logger records.

Parameter counts (total, trainable), training throughput (images/s over the training
batches, validation excluded) and peak memory (CUDA allocator peak on a GPU, the process's
peak resident memory on a CPU). Written by rank 0 when fitting ends.
"""

from __future__ import annotations

import json
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


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """Peak memory in MiB and what it measures."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "process_max_rss"


class RunStats(L.Callback):
    """Count parameters, time training batches, write ``<dirpath>/run_stats.json``."""

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)
        self.images = 0
        self.seconds = 0.0
        self._batch_start = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.seconds += time.perf_counter() - self._batch_start
        self.images += int(batch["image"].shape[0]) * trainer.world_size

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        params = list(pl_module.parameters())
        peak, measure = peak_memory_mb(pl_module.device)
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
