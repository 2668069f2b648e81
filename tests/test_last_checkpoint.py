"""``last.ckpt`` holds the latest epoch at every epoch end, not the last epoch that beat
the best (Lightning >= 2.5 wrote it only with a new best): a killed run resumes where it
was."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from faceparse.training.last_checkpoint import EpochCheckpoint


class NeverBetter(BoringModel):
    """Its validation score never improves after the first epoch."""

    def validation_step(self, batch, batch_idx):
        self.log("val/score", 1.0)
        return super().validation_step(batch, batch_idx)


class LastSeen(L.Callback):
    """The epoch ``last.ckpt`` holds when each epoch starts, as a killed run would leave it."""

    def __init__(self, path: Path) -> None:
        self.path, self.epochs = path, []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch > 0:
            self.epochs.append(torch.load(self.path, weights_only=False)["epoch"])


@pytest.mark.parametrize(("with_validation", "every"), [(True, 1), (False, 1), (True, 2)])
def test_last_ckpt_is_the_latest_epoch_whether_or_not_it_was_the_best(
        tmp_path: Path, with_validation: bool, every: int) -> None:
    """Also for the epochs between validations (``check_val_every_n_epoch=2``)."""
    checkpoint = EpochCheckpoint(dirpath=tmp_path, filename="epoch_{epoch:03d}", save_last=True,
                                 monitor="val/score" if with_validation else None, mode="max",
                                 save_top_k=1, enable_version_counter=False,
                                 auto_insert_metric_name=False)
    seen = LastSeen(tmp_path / "last.ckpt")
    trainer = L.Trainer(max_epochs=4, limit_train_batches=2,
                        limit_val_batches=1 if with_validation else 0,
                        num_sanity_val_steps=0, callbacks=[checkpoint, seen], logger=False,
                        check_val_every_n_epoch=every,
                        enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu")
    trainer.fit(NeverBetter())
    assert seen.epochs == [0, 1, 2]
    if with_validation:
        # the first validation (the only best)
        assert [p.name for p in sorted(tmp_path.glob("epoch_*.ckpt"))] == [
            f"epoch_{every - 1:03d}.ckpt"]


def test_its_state_is_saved_under_model_checkpoints_key(tmp_path: Path) -> None:
    """Checkpoints of runs from before it resume with their best, and theirs with ours."""
    ours = EpochCheckpoint(dirpath=tmp_path, monitor="val/score", mode="max")
    plain = ModelCheckpoint(dirpath=tmp_path, monitor="val/score", mode="max")
    assert ours.state_key == plain.state_key and ours.state_key.startswith("ModelCheckpoint{")
