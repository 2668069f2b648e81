"""``last.ckpt`` at every epoch end, as the run folder promises.

Lightning 2.5 changed ``ModelCheckpoint(save_last=True)``: at an epoch end it now writes
``last.ckpt`` only when that epoch also saved a top-k checkpoint. An epoch that did not
beat the best left ``last.ckpt`` at the last epoch that did, so a run killed without
``on_exception.ckpt`` (SIGKILL, the out-of-memory killer, a node failure) resumed epochs
back, training them again and logging their rows twice. :class:`EpochCheckpoint` is the
best-checkpoint callback that writes ``last.ckpt`` after every epoch again.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["EpochCheckpoint"]


class EpochCheckpoint(ModelCheckpoint):
    """:class:`ModelCheckpoint` whose ``save_last`` writes ``last.ckpt`` at every epoch end,
    whether or not the epoch was a new best."""

    def _generate_state_key(self, **kwargs: Any) -> str:
        """ModelCheckpoint's key: Lightning saves and restores a callback's state (the best
        checkpoint and its score) under it, so runs from before this class resume with
        their best, and theirs with ours."""
        return f"{ModelCheckpoint.__qualname__}{kwargs!r}"

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after an epoch-end validation (which wrote last.ckpt at this step already), and
        # for an epoch without one (check_val_every_n_epoch > 1, no validation data)
        super().on_train_epoch_end(trainer, pl_module)
        self._last_of_epoch(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._last_of_epoch(trainer)

    def _last_of_epoch(self, trainer: L.Trainer) -> None:
        """``last.ckpt`` now, unless Lightning just wrote one at this step."""
        if (self.save_last and not self._should_skip_saving_checkpoint(trainer)
                and self._last_global_step_saved != trainer.global_step):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
