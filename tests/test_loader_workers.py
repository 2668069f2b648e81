"""Loader workers: they start cleanly even after the parent used OpenCV's thread pool, and
each DDP rank's workers draw their own augmentations."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np

from faceparse.data import loaders
from faceparse.data.transforms import train_transform

SCRIPT = textwrap.dedent("""
    import cv2, numpy as np
    from faceparse.data.datamodule import FaceDataModule
    from faceparse.data.synthetic import SyntheticFaces
    from functools import partial

    cv2.setNumThreads(2)  # the parent's pool is alive when the workers are forked
    for _ in range(3):
        cv2.resize(np.zeros((2048, 2048, 3), np.uint8), (1024, 1024))
    dm = FaceDataModule(partial(SyntheticFaces, sizes={"train": 4, "val": 2, "test": 2}),
                        image_size=32, batch_size=2, num_workers=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    print(tuple(batch["image"].shape))
""")


def test_workers_do_not_hang_after_the_parent_used_opencv_threads() -> None:
    # a hang never ends: the limit only has to beat "for ever", not a busy machine
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(2, 3, 32, 32)" in result.stdout


def _draws(monkeypatch, rank: int) -> list[float]:
    """The first augmentation draws of worker 0 (torch seed 1234) on DDP rank ``rank``."""
    transform = train_transform(32, "ourface")
    info = SimpleNamespace(seed=1234, dataset=SimpleNamespace(transform=transform))
    monkeypatch.setattr(loaders, "get_worker_info", lambda: info)
    loaders.seed_worker_transform(0, rank=rank)
    return transform.random_generator.random(20).tolist()


def test_each_rank_draws_its_own_augmentations(monkeypatch) -> None:
    """Every rank seeds alike (seed_everything): without the rank, sample k of every rank
    got the same flip, angle and jitter. Rank 0 keeps the seed it always had."""
    rank0, rank1 = _draws(monkeypatch, 0), _draws(monkeypatch, 1)
    assert rank0 != rank1
    assert rank0 == np.random.default_rng(1234).random(20).tolist()
    assert _draws(monkeypatch, 1) == rank1  # still reproducible
