"""W&B dashboards of a run: predictions with masks, per-class scores, confusion matrix.

A no-op unless a ``WandbLogger`` is attached (``logger=wandb``), so it can sit in the
default callbacks. Scores come from what the module logs (``{stage}/f1/<class>``, read
with :func:`~faceparse.training.callbacks.score_rows`); the confusion matrix is the
module's metric state (:class:`~faceparse.metrics.SegmentationMetrics`), read before the
module's epoch end resets it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from faceparse.labels import IGNORE_INDEX, LabelScheme, get_scheme
from faceparse.training.callbacks import first_predictions, image_count, score_rows

__all__ = ["WandbMedia", "confusion_figure"]


def confusion_figure(confusion: torch.Tensor, scheme: LabelScheme) -> np.ndarray:
    """The confusion matrix, rows (ground truth) normalised to 1, as an RGB uint8 picture."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = confusion.double().cpu().numpy()
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    n = scheme.num_classes
    fig = Figure(figsize=(1 + 0.5 * n, 1 + 0.5 * n), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(rates, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(n), scheme.class_names, rotation=90)
    ax.set_yticks(range(n), scheme.class_names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                ax.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if rates[i, j] > 0.5 else "black")
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def scores_step(trainer: L.Trainer) -> int:
    """The step Lightning logs the scores of this validation or test at: the batches that
    stepped the optimizer so far (a validation at an epoch's end comes before its last
    step counts in ``global_step``), so the pictures and tables sit beside their scores."""
    loop = getattr(trainer.fit_loop, "epoch_loop", None)
    return int(getattr(loop, "_batches_that_stepped", trainer.global_step))


class WandbMedia(L.Callback):
    """Logs to W&B, for validation (every ``every_n_epochs``) and test:

    - ``{stage}/predictions``: ``wandb.Image`` of the first images with ground-truth and
      prediction masks and class labels (toggle them in the W&B image panel);
    - ``{stage}/per_class``: a ``wandb.Table`` of per-class F1/IoU;
    - ``{stage}/confusion_matrix``: the row-normalised confusion matrix as an image;
    - with ``log_best_checkpoint``, the best checkpoint as a ``model`` artifact after fit.
    """

    def __init__(self, labels: str, every_n_epochs: int = 1, num_images: int = 4,
                 log_best_checkpoint: bool = False) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"callbacks.wandb_media.every_n_epochs must be >= 1, "
                             f"got {every_n_epochs}")
        self.scheme = get_scheme(labels)
        self.every_n_epochs = every_n_epochs
        self.num_images = image_count("callbacks.wandb_media.num_images", num_images)
        self.log_best_checkpoint = log_best_checkpoint
        self.class_labels = dict(enumerate(self.scheme.class_names)) | {IGNORE_INDEX: "ignore"}
        self._confusion: dict[str, torch.Tensor] = {}

    @staticmethod
    def _logger(trainer: L.Trainer) -> WandbLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)

    def _due(self, trainer: L.Trainer, stage: str) -> bool:
        if self._logger(trainer) is None or trainer.sanity_checking:
            return False
        if stage == "test":
            return True
        # counted as Lightning counts check_val_every_n_epoch (epochs N, 2N, ... from 1), so
        # the same N logs every validation; the last epoch always logs (the trained model)
        epoch = trainer.current_epoch + 1
        last_step = trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
        return epoch % self.every_n_epochs == 0 or epoch == trainer.max_epochs or last_step

    # -- predictions -----------------------------------------------------------------
    @rank_zero_only
    def _log_predictions(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict,
                         stage: str) -> None:
        import wandb

        images, truth, preds = first_predictions(trainer, pl_module, batch, self.num_images)
        pictures = [
            wandb.Image(image, masks={
                "ground_truth": {"mask_data": t, "class_labels": self.class_labels},
                "prediction": {"mask_data": p, "class_labels": self.class_labels},
            })
            for image, t, p in zip(images, truth, preds, strict=True)
        ]
        self._logger(trainer).log_metrics({f"{stage}/predictions": pictures},
                                          step=scores_step(trainer))

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and self._due(trainer, "val"):
            self._log_predictions(trainer, pl_module, batch, "val")

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and self._due(trainer, "test"):
            self._log_predictions(trainer, pl_module, batch, "test")

    # -- confusion matrix (runs before the module's epoch end resets it) ---------------
    def _keep_confusion(self, trainer: L.Trainer, pl_module: L.LightningModule,
                        stage: str) -> None:
        metrics = getattr(pl_module, "metrics", None)
        if not self._due(trainer, stage) or metrics is None or stage not in metrics:
            return
        if hasattr(metrics[stage], "confmat"):  # a SegmentationMetrics
            # every rank calls this: the matrix summed over ranks, as the scores are (each
            # rank's own share otherwise); a no-op in one process
            with metrics[stage].sync_context():
                self._confusion[stage] = metrics[stage].confmat.detach().clone()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._keep_confusion(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._keep_confusion(trainer, pl_module, "test")

    # -- scores (the module has logged them by now) ------------------------------------
    @rank_zero_only
    def _log_scores(self, trainer: L.Trainer, stage: str) -> None:
        import wandb

        payload: dict[str, Any] = {}
        if f"{stage}/f1_mean" in trainer.callback_metrics:
            rows, _ = score_rows(trainer.callback_metrics, self.scheme, stage)
            payload[f"{stage}/per_class"] = wandb.Table(
                columns=list(rows[0]), data=[list(row.values()) for row in rows])
        confusion = self._confusion.pop(stage, None)
        if confusion is not None:
            payload[f"{stage}/confusion_matrix"] = wandb.Image(
                confusion_figure(confusion, self.scheme), caption="rows: ground truth")
        if payload:
            self._logger(trainer).log_metrics(payload, step=scores_step(trainer))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._due(trainer, "val"):
            self._log_scores(trainer, "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._due(trainer, "test"):
            self._log_scores(trainer, "test")

    # -- best checkpoint ---------------------------------------------------------------
    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = self._logger(trainer)
        checkpoint = trainer.checkpoint_callback
        if not (self.log_best_checkpoint and logger and checkpoint
                and checkpoint.best_model_path):
            return
        import wandb

        run = logger.experiment
        score = checkpoint.best_model_score
        artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata={
            "monitor": checkpoint.monitor, "score": None if score is None else float(score),
            "file": Path(checkpoint.best_model_path).name,
        })
        artifact.add_file(checkpoint.best_model_path)
        run.log_artifact(artifact, aliases=["best"])
