"""The W&B confusion matrix under DDP: summed over ranks like the scores beside it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from faceparse.metrics import SegmentationMetrics
from faceparse.training.wandb_media import WandbMedia


def _rank(rank: int, rendezvous: str, out: dict) -> None:
    # a file rendezvous: a free port found first could be taken before gloo binds it
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=2)
    try:
        metrics = SegmentationMetrics(num_classes=3)
        truth = torch.full((1, 2, 2), rank)  # rank 0 sees class 0, rank 1 class 1
        metrics.update(truth.clone(), truth)
        callback = WandbMedia("lapa")
        callback._due = lambda trainer, stage: True
        callback._keep_confusion(SimpleNamespace(), SimpleNamespace(metrics={"val": metrics}),
                                 "val")
        out[rank] = (callback._confusion["val"].tolist(), metrics.confmat.tolist())
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_each_rank_keeps_the_matrix_summed_over_ranks(tmp_path) -> None:
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank, args=(str(tmp_path / "rendezvous"), out), nprocs=2)
        kept, local = dict(out), {r: out[r][1] for r in out}
    summed = [[4, 0, 0], [0, 4, 0], [0, 0, 0]]
    assert kept[0][0] == summed and kept[1][0] == summed
    assert local[0] == [[4, 0, 0], [0, 0, 0], [0, 0, 0]]  # the state itself stays the rank's
