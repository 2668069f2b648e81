"""The LightningModule: loss, optimisation and metrics around a :class:`FaceParser`.

It knows nothing of the encoder or decoder internals; optimizer and scheduler arrive
as Hydra ``_partial_`` callables and are completed here with the trainable parameters
(a frozen ViT never enters the optimizer; a submodule with an ``lr_scale`` attribute, such
as a fine-tuned ViT, gets its own parameter group) and the run's total step count.
Checkpoints carry the resolved network config and label scheme (see
:mod:`faceparse.checkpoints`) and the RNG states, so a resumed run repeats exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn

from faceparse.checkpoints import META_KEY, checkpoint_metadata, rng_states, set_rng_states
from faceparse.labels import get_scheme
from faceparse.losses import DeepSupervisionLoss
from faceparse.metrics import SegmentationMetrics

__all__ = ["FaceParsingModule"]

STAGES = ("val", "test")


class FaceParsingModule(L.LightningModule):
    """Trains a face parser with CE + aux loss; logs ``{stage}/{metric}`` names.

    Args:
        net: the face parser (encoder + decoder).
        optimizer: ``partial`` taking the parameters.
        scheduler: ``partial`` taking the optimizer and ``total_steps``, or ``None``.
        labels: label scheme name (class names for per-class metrics).
        aux_weight: weight of the auxiliary losses.
        class_weights: optional CE weights per class.
        dice_weight: weight of a soft Dice term added to CE.
        channels_last: NHWC weights and activations for the convolutions (CUDA only).
        cudnn_benchmark: let cuDNN time its convolution algorithms (CUDA only).
        compile: ``torch.compile`` each part of the net (slow first steps, then faster).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        labels: str = "ourface",
        aux_weight: float = 0.4,
        class_weights: Sequence[float] | None = None,
        dice_weight: float = 0.0,
        channels_last: bool = True,
        cudnn_benchmark: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        self.net = net
        self.scheme = get_scheme(labels)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.criterion = DeepSupervisionLoss(aux_weight, class_weights, dice_weight)
        self.metrics = nn.ModuleDict(
            {stage: SegmentationMetrics(self.scheme.num_classes) for stage in STAGES}
        )
        self.last_scores: dict[str, dict[str, torch.Tensor]] = {}
        # The resolved ``model.net`` config; the entry point sets it (only it has the config).
        self.net_config: dict[str, Any] | None = None
        self.channels_last = channels_last
        self.cudnn_benchmark = cudnn_benchmark
        self.compile_parts = compile
        self.compiled = False  # setup runs once per stage; compile once

    def setup(self, stage: str) -> None:
        """Speed-ups that only pay on a GPU are switched on only there (CPU stays plain)."""
        if self.trainer.strategy.root_device.type == "cuda":
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
            if self.channels_last:  # kept by the later move to the GPU
                self.net.to(memory_format=torch.channels_last)
        if self.compile_parts and not self.compiled:
            # In place (state_dict keys unchanged); each child, so forward_with_aux is covered.
            for part in self.net.children():
                part.compile()
            self.compiled = True

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

    def _eval_step(self, stage: str, batch: dict) -> dict[str, torch.Tensor]:
        logits = self.net(batch["image"])
        target = batch["mask"].long()
        loss = self.criterion.cross_entropy(logits, target)
        self.log(f"{stage}/loss", loss, batch_size=target.shape[0], sync_dist=True)
        preds = logits.argmax(1)
        self.metrics[stage].update(preds, target)
        return {"preds": preds}

    def validation_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step("val", batch)

    def test_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step("test", batch)

    def _log_epoch(self, stage: str) -> None:
        scores = self.metrics[stage].compute()
        self.metrics[stage].reset()
        values = {f"{stage}/{k}": scores[k].float() for k in ("f1_mean", "miou", "pixel_acc")}
        for i, name in enumerate(self.scheme.class_names):
            if scores["present"][i]:
                values[f"{stage}/f1/{name}"] = scores["f1"][i].float()
                values[f"{stage}/iou/{name}"] = scores["iou"][i].float()
        self.log(f"{stage}/f1_mean", values.pop(f"{stage}/f1_mean"), prog_bar=True)
        self.log_dict(values)
        self.last_scores[stage] = scores

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[META_KEY] = checkpoint_metadata(self.net_config, self.scheme)
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Only a resumed fit continues the random streams (shuffling, dropout).
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        if fitting and "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])

    def _param_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters; those of a module with ``lr_scale`` form their own group."""
        scaled = {
            id(p): m.lr_scale
            for m in self.modules() if hasattr(m, "lr_scale")
            for p in m.parameters()
        }
        groups: dict[float, list[nn.Parameter]] = {}
        for p in self.parameters():
            if p.requires_grad:
                groups.setdefault(scaled.get(id(p), 1.0), []).append(p)
        return [{"params": ps, "lr_scale": scale} for scale, ps in groups.items()]

    def _fused_option(self) -> dict[str, bool]:
        """``fused: null`` in the optimizer config means fused kernels on CUDA, unless an fp16
        gradient scaler is in play (Lightning cannot clip gradients for a fused step then)."""
        keywords = getattr(self.optimizer_factory, "keywords", {})
        if "fused" in keywords and keywords["fused"] is None:
            plugin = getattr(self._trainer, "precision_plugin", None)
            scaler = getattr(plugin, "scaler", None)
            return {"fused": self.device.type == "cuda" and scaler is None}
        return {}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip for a fused optimizer too, when no gradient scaler is in play.

        Lightning refuses to clip under mixed precision when the optimizer is fused, since
        with an fp16 ``GradScaler`` the fused step unscales internally and the gradients it
        would clip are still scaled. bf16 and fp32 have no scaler: the gradients are true,
        so they are clipped here, before the fused step.
        """
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if not optimizer.defaults.get("fused") or scaler is not None:
            super().configure_gradient_clipping(
                optimizer, gradient_clip_val, gradient_clip_algorithm
            )
            return
        if not gradient_clip_val:
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if gradient_clip_algorithm == "value":
            nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def configure_optimizers(self) -> dict[str, Any]:
        groups = self._param_groups()
        optimizer = self.optimizer_factory(params=groups, **self._fused_option())
        for group in optimizer.param_groups:
            group["lr"] *= group["lr_scale"]
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(
            optimizer=optimizer, total_steps=int(self.trainer.estimated_stepping_batches)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
