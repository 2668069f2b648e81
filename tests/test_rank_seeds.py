"""DDP ranks draw their own random streams, and restart them alike after a resume."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from faceparse.data import datamodule as datamodule_module
from faceparse.training.rank_seeds import RankEpochSeeds, epoch_seed


class FakeDataModule:
    def __init__(self) -> None:
        self.seeded: list[tuple[str, int]] = []

    def seed_augmentation(self, split: str, seed: int) -> None:
        self.seeded.append((split, seed))


def draws(callback: RankEpochSeeds, world: int, epoch: int, rank: int) -> tuple:
    data = FakeDataModule()
    trainer = SimpleNamespace(world_size=world, current_epoch=epoch, global_rank=rank,
                              datamodule=data)
    callback.on_train_epoch_start(trainer, None)
    return random.random(), float(np.random.rand()), float(torch.rand(())), tuple(data.seeded)


def test_epoch_seeds_differ_for_every_epoch_and_rank() -> None:
    seeds = {epoch_seed(42, epoch, rank) for epoch in range(50) for rank in range(8)}
    assert len(seeds) == 400  # a sum would give rank 1 / epoch 0 rank 0 / epoch 1's seed
    assert epoch_seed(42, 3, 1) == epoch_seed(42, 3, 1) != epoch_seed(43, 3, 1)
    assert all(0 <= s < 2**32 for s in seeds)


def test_each_rank_restarts_its_streams_at_every_epoch() -> None:
    callback = RankEpochSeeds(42)
    first = draws(callback, world=2, epoch=1, rank=1)
    torch.rand(100), np.random.rand(100), random.random()  # the run goes on...
    assert draws(callback, world=2, epoch=1, rank=1) == first  # ...a resume draws the same
    assert first[3] == (("train", epoch_seed(42, 1, 1)),)
    other_rank = draws(callback, world=2, epoch=1, rank=0)
    assert other_rank[:3] != first[:3] and other_rank[3] != first[3]


def test_one_process_keeps_its_streams_running() -> None:
    """Its checkpoint holds its states; reseeding would only change the published runs."""
    torch.manual_seed(0)
    expected = torch.rand(()).item()
    torch.manual_seed(0)
    assert draws(RankEpochSeeds(42), world=1, epoch=3, rank=0)[2] == expected


def test_the_seed_travels_in_the_checkpoint() -> None:
    saved = RankEpochSeeds(1234).state_dict()
    restored = RankEpochSeeds(7)  # a run seeded at random draws another seed on resume
    restored.load_state_dict(saved)
    assert restored.seed == 1234


def test_ranks_seed_their_augmentation_apart_before_a_trainer_is_attached(
        compose, tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    """``train`` opens the splits before ``fit``: the rank comes from the launcher's
    environment then, or every rank would draw the same flips and angles."""
    def first_draws(rank: int) -> list[float]:
        monkeypatch.setattr(datamodule_module.rank_zero_only, "rank", rank)
        data = instantiate(compose(list(tiny)).data)
        torch.manual_seed(0)
        data.open_splits(["train"], world_size=2)
        return list(data.datasets["train"].transform.random_generator.random(4))

    assert first_draws(0) == first_draws(0)
    assert first_draws(1) != first_draws(0)
