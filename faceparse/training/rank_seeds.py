"""Random streams that every DDP rank can restart on its own, so a resume repeats them.

A checkpoint is written by rank 0 alone, so it can hold only rank 0's random states; every
rank restarting from those would draw other augmentations (and dropout) than the
uninterrupted run drew on ranks 1 and up. Instead, under DDP each training epoch starts
each rank's streams (Python, NumPy, torch and the train split's augmentation) from a seed
made of the run's seed, the epoch and the rank: a run resumed from an epoch end draws what
the uninterrupted run drew, on every rank, with no collective call at save time.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch

__all__ = ["RankEpochSeeds", "epoch_seed"]


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A 32-bit seed per (run seed, epoch, rank); SeedSequence mixes them, so no two
    (epoch, rank) pairs of a run share one (a plain sum would make rank 1's epoch 0 rank
    0's epoch 1)."""
    return int(np.random.SeedSequence([seed % 2**32, epoch, rank]).generate_state(1)[0])


class RankEpochSeeds(L.Callback):
    """Under DDP, seed every rank's streams at each training epoch's start (see the module
    docstring). One process keeps its streams as they run: its checkpoint holds them.

    ``seed`` is the run's (``L.seed_everything``'s return value); it travels in the
    checkpoint, so a run seeded at random resumes with the seed it drew.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size < 2:
            return
        seed = epoch_seed(self.seed, trainer.current_epoch, trainer.global_rank)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # the CUDA generators too
        reseed = getattr(trainer.datamodule, "seed_augmentation", None)
        if reseed is not None:
            reseed("train", seed)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seed = int(state_dict["seed"])
