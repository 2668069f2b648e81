"""The best checkpoint of a run resumed in a new folder (``ckpt_path=<run>/.../last.ckpt``).

Lightning's ``ModelCheckpoint`` reloads its record of the best checkpoints only when the
checkpoint folder is the one it saved them in; resumed in a new run folder it forgets their
scores, so the first new epoch became "best" however bad, and was tested and returned to a
sweep as the run's value. :class:`KeepBestCheckpoints` carries the record over: the saved
best checkpoints are copied into the new folder (the old run's files stay as they are, and
the new run folder holds its own best, as ``faceparse.predict ckpt=<run folder>`` expects),
and a new epoch becomes the best only if it beats them. A best checkpoint whose file is gone
cannot be tested: the record then starts afresh with the new epochs, with a warning.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from faceparse.training.distributed import is_rank_zero

__all__ = ["KeepBestCheckpoints"]

log = logging.getLogger(__name__)


class KeepBestCheckpoints(L.Callback):
    """Restores the best-checkpoint record of every ``ModelCheckpoint`` that monitors a
    metric, when the checkpoint a fit resumes was saved from another folder."""

    def __init__(self) -> None:
        self.saved: dict[str, dict[str, Any]] = {}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("callbacks") or {}
        self.saved = {c.state_key: states[c.state_key] for c in trainer.checkpoint_callbacks
                      if c.state_key in states}
        # Lightning's notice that it drops the record: not so here
        warnings.filterwarnings("ignore", message="The dirpath has changed from")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # not on_train_start: a run resumed with no epoch left never starts training, and
        # its best checkpoint must still be carried, tested and returned
        for callback in trainer.checkpoint_callbacks:
            state = self.saved.get(callback.state_key)
            if (isinstance(callback, ModelCheckpoint) and callback.monitor and state
                    and state.get("best_k_models") and callback.dirpath
                    and not _same(state.get("dirpath"), callback.dirpath)):
                carry_best(callback, state)
        self.saved = {}


def _same(a: str | None, b: str) -> bool:
    return a is not None and Path(a).resolve() == Path(b).resolve()


def carry_best(callback: ModelCheckpoint, state: dict[str, Any]) -> None:
    """Copy the saved best checkpoints into ``callback.dirpath`` and make them its record."""
    folder = Path(callback.dirpath)
    kept: dict[str, Any] = {}
    for old, score in state["best_k_models"].items():
        old, new = Path(old), folder / Path(old).name
        if not old.is_file():
            log.warning("the resumed run's best checkpoint %s (%s=%.4f) is gone: it cannot "
                        "be kept, tested or beaten", old, callback.monitor, float(score))
            continue
        if is_rank_zero() and not new.exists():
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy2(old, new)
        kept[str(new)] = score
    callback.best_k_models = kept
    if not kept:
        log.warning("the best-checkpoint record starts afresh with this run's epochs")
        callback.best_model_path, callback.best_model_score = "", None
        return
    best_first = sorted(kept, key=lambda p: float(kept[p]), reverse=callback.mode == "max")
    callback.best_model_path, callback.best_model_score = best_first[0], kept[best_first[0]]
    callback.kth_best_model_path, callback.kth_value = best_first[-1], kept[best_first[-1]]
    log.info("kept the resumed run's best checkpoint %s (%s=%.4f), copied into %s: a new "
             "epoch becomes the best only if it beats it", Path(best_first[0]).name,
             callback.monitor, float(kept[best_first[0]]), folder)
