"""The LightningModule: loss, optimisation and metrics around a :class:`FaceParser`.

It knows nothing of the encoder or decoder internals, nor of its callbacks: the loss is a
config group, the optimizer and scheduler arrive as Hydra ``_partial_`` callables completed
with the parameter groups the parts declare (:mod:`.optim`), speed options come from
:class:`~faceparse.fast_path.FastPath`, and everything a callback shows is logged as
``{stage}/{name}``. Checkpoints carry the net's config and label scheme (see
:mod:`faceparse.checkpoints`) and the RNG states, so a resumed run repeats exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn

from faceparse.checkpoints import META_KEY, checkpoint_metadata, rng_states, set_rng_states
from faceparse.fast_path import FastPath
from faceparse.labels import LabelScheme, get_scheme
from faceparse.metrics import HEADLINE, SegmentationMetrics
from faceparse.models import FaceParser
from faceparse.models.dinov3 import frozen_vits_to_bf16
from faceparse.training.optim import build_optimizer, clip_gradients, clips_itself

__all__ = ["FaceParsingModule", "STAGES", "monitorable"]

STAGES = ("val", "test")


def monitorable(scheme: LabelScheme) -> list[str]:
    """The names a checkpoint callback or a sweeper can monitor during training: what
    validation logs (:meth:`FaceParsingModule._log_epoch`, its loss) and the training loss.
    A name outside them fails only once the first epoch is over."""
    per_class = [f"val/{m}/{c}" for m in ("f1", "iou") for c in scheme.class_names]
    return [*(f"val/{k}" for k in HEADLINE), "val/loss", *per_class, "train/loss"]

class FaceParsingModule(L.LightningModule):
    """Trains a face parser and scores it; logs ``{stage}/{metric}`` names.

    Args:
        net: the face parser; its ``config`` (set when built from config) goes into
            every checkpoint, so the file alone rebuilds it.
        optimizer: ``partial`` taking the parameter groups.
        loss: ``loss(logits, aux_logits, target) -> {"loss": ..., ...}`` (``conf/loss``).
        scheduler: ``partial`` taking the optimizer and ``total_steps``, or ``None``.
        labels: label scheme name (class names for per-class metrics).
        fast_path: speed options, switched on once when the first stage starts.
        image_size: the training input side, recorded in checkpoints for inference.

    The validation and test loss is ``loss`` without the auxiliary terms.
    """

    def __init__(
        self,
        net: FaceParser,
        optimizer: Callable[..., torch.optim.Optimizer],
        loss: nn.Module,
        scheduler: Callable[..., Any] | None = None,
        labels: str = "ourface",
        fast_path: FastPath | None = None,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer", "loss", "scheduler", "fast_path"],
                                  logger=False)
        self.net = net
        self.scheme = get_scheme(labels)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.criterion = loss
        self.metrics = nn.ModuleDict(
            {stage: SegmentationMetrics(self.scheme.num_classes) for stage in STAGES}
        )
        self.fast_path = fast_path or FastPath()
        self.fast_path_applied = False
        self.image_size = image_size

    def setup(self, stage: str) -> None:
        if not self.fast_path_applied:  # setup runs once per stage: fit, then test
            if self.fast_path.wants_frozen_vit_bf16_in_training(str(self.trainer.precision)):
                frozen_vits_to_bf16(self.net)  # before compiling: the graphs see bf16 weights
            self.fast_path.apply(self.net, self.trainer.strategy.root_device)
            self.fast_path_applied = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits, aux = self.net.forward_with_aux(batch["image"])
        losses = self.criterion(logits, aux, batch["mask"].long())
        self.log_dict(
            {f"train/{k}": v for k, v in losses.items()},
            prog_bar=True,
            batch_size=batch["image"].shape[0],
        )
        return losses["loss"]

    def _eval_step(self, stage: str, batch: dict) -> None:
        logits = self.net(batch["image"])
        target = batch["mask"].long()
        loss = self.criterion(logits, (), target)["loss"]
        self.log(f"{stage}/loss", loss, batch_size=target.shape[0], sync_dist=True)
        self.metrics[stage].update(logits.argmax(1), target)

    def _monitored_classes(self, stage: str) -> set[str]:
        """The per-class keys of ``stage`` a callback (checkpoint, early stopping) watches."""
        if self._trainer is None:
            return set()
        monitors = {getattr(c, "monitor", None) for c in self.trainer.callbacks}
        return {m for m in monitors if isinstance(m, str)
                and m.startswith((f"{stage}/f1/", f"{stage}/iou/"))}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _log_epoch(self, stage: str) -> None:
        """Headline scores, and per-class F1/IoU of the classes the ground truth has; a
        monitored class it lacks this epoch is NaN, which checkpointing ranks last (Lightning
        would otherwise stop the run: "could not find the monitored key")."""
        scores = self.metrics[stage].compute()
        self.metrics[stage].reset()
        values = {f"{stage}/{k}": scores[k].float() for k in HEADLINE}
        for i, name in enumerate(self.scheme.class_names):
            if scores["present"][i]:
                values[f"{stage}/f1/{name}"] = scores["f1"][i].float()
                values[f"{stage}/iou/{name}"] = scores["iou"][i].float()
        for key in self._monitored_classes(stage) - values.keys():
            values[key] = torch.tensor(float("nan"), device=self.device)
        self.log(f"{stage}/f1_mean", values.pop(f"{stage}/f1_mean"), prog_bar=True)
        self.log_dict(values)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[META_KEY] = checkpoint_metadata(self.net.config, self.scheme,
                                                    self.image_size)
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Only a resumed fit continues the random streams (shuffling, dropout).
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        if fitting and "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Lightning clips, except for a fused optimizer with true gradients (see .optim)."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if clips_itself(optimizer, scaler):
            params = (p for group in optimizer.param_groups for p in group["params"])
            clip_gradients(params, gradient_clip_val, gradient_clip_algorithm)
        else:
            super().configure_gradient_clipping(optimizer, gradient_clip_val,
                                                gradient_clip_algorithm)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.optimizer_factory, self)
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        total_steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(total_steps):  # checked earlier by faceparse.training.preflight
            raise ValueError("the learning-rate schedule needs a length: set trainer.max_steps "
                             "or trainer.max_epochs, or scheduler=none")
        scheduler = self.scheduler_factory(optimizer=optimizer, total_steps=int(total_steps))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
