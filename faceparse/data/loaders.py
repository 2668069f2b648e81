"""Loader plumbing: per-worker augmentation seeds, OpenCV threads, skip counts per pass, and
the evaluation sampler of a multi-process run."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import cv2
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from faceparse.data.transforms import seed_transform

__all__ = ["SkipReportingLoader", "eval_sampler", "rank_seed", "seed_worker_transform",
           "single_thread_opencv"]

log = logging.getLogger(__name__)


# apart enough that no two (rank, worker) pairs share a seed
RANK_SEED_STRIDE = 1_000_003


def rank_seed(seed: int, rank: int) -> int:
    """``seed`` made distinct per DDP rank (rank 0 keeps it): every rank seeds alike, and
    without this sample k of every rank would get the same flip, angle and jitter."""
    return (seed + rank * RANK_SEED_STRIDE) % 2**32


def seed_worker_transform(worker_id: int, rank: int = 0) -> None:
    """Give each loader worker its own reproducible augmentation stream.

    Albumentations keeps a private RNG that global seeding does not reach; torch's
    per-worker seed derives from the run's seed, so runs repeat and workers differ, and
    ``rank`` (the DDP rank) makes the ranks differ too.
    """
    info = get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if transform is not None:
        seed_transform(transform, rank_seed(info.seed, rank))


def single_thread_opencv() -> None:
    """One OpenCV thread, set in the parent *before* loader workers are forked.

    Workers are the parallelism; and OpenCV's thread pool does not survive ``fork``: a
    worker that reconfigures or uses an inherited live pool can hang for ever.
    """
    cv2.setNumThreads(1)


def eval_sampler(dataset: Dataset) -> Sampler | None:
    """Each sample on exactly one rank, for validation and test (``None``: one process).

    Lightning's default distributed sampler pads the split with repeated samples so every
    rank gets as many batches, and the repeats would count twice in the summed confusion
    matrix. Ranks may run one batch apart here: evaluation has no gradient sync to hang on,
    and the metrics sync once, at epoch end.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    return UnrepeatedDistributedSampler(dataset, shuffle=False)


class SkipReportingLoader(DataLoader):
    """A DataLoader that says, after each pass, how many bad samples the dataset skipped.

    The dataset's ``skipped`` counter lives in shared memory, so skips in worker
    processes count too; each skip was already logged with its file names.
    """

    def __iter__(self) -> Iterator[Any]:
        counter = getattr(self.dataset, "skipped", None)
        start = counter.value if counter is not None else 0
        try:
            yield from super().__iter__()
        finally:
            skipped = counter.value - start if counter is not None else 0
            if skipped:
                log.warning("%d bad samples skipped in this pass over %s (see the warnings "
                            "above for the files)", skipped, type(self.dataset).__name__)
