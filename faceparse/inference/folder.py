"""Many images through a parser: decode in workers, predict, write in threads.

The main thread runs the model and resizes its logits back to each photo (torch ops, on
the model's intra-op threads); the colours and PNG writes run in writer threads. On a GPU
they overlap the next batches (at most :data:`AHEAD` batches behind, so memory stays
bounded). On a CPU the model and the writes share the same cores: overlapping them leaves
three busy threads on two cores and the model's threads wait on each other at every
layer, so there they take turns, each on all cores (as many writer threads as the model
has intra-op threads).

A bad file (unreadable, truncated, not an image, a folder, a broken link) is a warning
naming it and a count in the summary; the run goes on. Outputs that exist are skipped
unless ``overwrite``, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress
from torch.utils.data import DataLoader, Dataset

from faceparse.data.io import BadSampleError
from faceparse.inference.faces import Box
from faceparse.inference.images import read_photo
from faceparse.inference.outputs import output_paths, write_outputs
from faceparse.inference.predictor import Parser

log = logging.getLogger(__name__)

__all__ = ["AHEAD", "Summary", "WriteOptions", "predict_files", "writer_threads"]

AHEAD = 2  # batches the writes may lag behind the model on a GPU


@dataclass
class Summary:
    """What a run did; ``failed`` lists ``(file, reason)``."""

    images: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (f"{self.images} images, {len(self.failed)} failed, {self.skipped} skipped "
                f"(outputs exist), {self.seconds:.1f} s, {self.images_per_s:.2f} images/s")


@dataclass(frozen=True)
class WriteOptions:
    out_dir: Path
    save_overlay: bool = True
    alpha: float = 0.5
    save_probs: bool = False
    overwrite: bool = False


class _Photos(Dataset):
    """Decoded photos by index; a bad file gives its error message instead."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | str]:
        try:
            return i, read_photo(self.files[i])
        except BadSampleError as err:
            return i, str(err)


def _as_list(batch: list) -> list:
    return batch


def writer_threads(device: torch.device, loader_workers: int = 0) -> int:
    """On a CPU as many as the model's intra-op threads (the writes run between batches,
    on the cores the model uses); beside a GPU the cores the loader leaves free, at least
    two: there the writes are the CPU work users wait for (an H100 parsed 129 images/s of
    512 px while two writer threads wrote 25 images/s of PNGs)."""
    if device.type == "cpu":
        return max(1, min(8, torch.get_num_threads()))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(2, min(16, (cores or 2) - loader_workers))


def predict_files(parser: Parser, files: list[Path], stems: list[Path], options: WriteOptions,
                  batch_size: int = 8, num_workers: int = 2,
                  boxes: list[list[Box] | None] | None = None) -> Summary:
    """Parse ``files`` and write each one's outputs under ``options.out_dir / stem``."""
    summary = Summary()
    inputs = {f.resolve() for f in files}
    todo = []
    for i, stem in enumerate(stems):
        targets = output_paths(options.out_dir, stem, options.save_overlay, options.save_probs)
        if any(t.resolve() in inputs for t in targets):
            log.warning("skipped: %s (its output would overwrite an input)", files[i])
            summary.failed.append((str(files[i]), "its output would overwrite an input"))
        elif not options.overwrite and all(t.exists() for t in targets):
            summary.skipped += 1
        else:
            todo.append(i)
    start = time.perf_counter()
    loader = DataLoader(_Photos([files[i] for i in todo]), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=_as_list,
                        persistent_workers=False)
    device = parser.model.device
    ahead = 0 if device.type == "cpu" else AHEAD
    batches: deque[list[Future]] = deque()  # the writes of each batch still in flight
    # no torch work in the writer threads: their intra-op threads would oversubscribe the
    # cores, and torch.set_num_threads there also sets MKL's global count (the model's)
    with ThreadPoolExecutor(writer_threads(device, num_workers)) as writer, \
            Progress(transient=True) as progress:
        task = progress.add_task("parsing", total=len(todo))
        for batch in loader:
            good = [(todo[j], item) for j, item in batch if not isinstance(item, str)]
            for j, item in batch:
                if isinstance(item, str):
                    log.warning("skipped: %s", item)
                    summary.failed.append((str(files[todo[j]]), item))
            if good:
                given = [boxes[i] for i, _ in good] if boxes is not None else None
                results = parser.predict_batch([rgb for _, rgb in good], options.save_probs,
                                               given)
                jobs = [(write_outputs, options.out_dir, stems[i], rgb, result,
                         options.save_overlay, options.alpha, parser.model.scheme)
                        for (i, rgb), result in zip(good, results, strict=True)]
                batches.append([writer.submit(*job) for job in jobs])
                summary.images += len(good)
            while len(batches) > ahead:
                for future in batches.popleft():
                    future.result()  # a write error (disk full) stops the run loudly
            progress.advance(task, len(batch))
        while batches:
            for future in batches.popleft():
                future.result()
    summary.seconds = time.perf_counter() - start
    return summary
