"""Callbacks that write what a user looks at after a run: pictures and score tables.

They read what the module logs (``{stage}/{name}``) or run its ``forward``, never its
attributes, so any module that logs the same names works with them.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from rich.console import Console
from rich.table import Table

from faceparse.data.io import write_atomic
from faceparse.data.transforms import denormalize
from faceparse.labels import LabelScheme, colorize, get_scheme
from faceparse.metrics import HEADLINE
from faceparse.option_values import whole_number

__all__ = ["PredictionImages", "ScoreReport", "first_predictions", "image_count",
           "prediction_panel", "score_rows"]


def prediction_panel(
    image: np.ndarray, truth: np.ndarray, pred: np.ndarray, scheme: LabelScheme
) -> np.ndarray:
    """One row ``input | ground truth | prediction`` as an RGB uint8 array."""
    return np.concatenate([image, colorize(truth, scheme), colorize(pred, scheme)], axis=1)


def image_count(option: str, value: Any) -> int:
    """How many images a picture callback shows, refused at start unless a whole number
    >= 1 (0 reached the model as an empty batch after an epoch of training)."""
    return whole_number(option, value, 1, "the number of images shown")


def first_predictions(trainer: L.Trainer, pl_module: L.LightningModule, batch: dict,
                      num_images: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first images of a batch as RGB uint8, their masks and the module's predictions
    (uint8 label maps), from its ``forward`` under the trainer's precision."""
    n = min(num_images, batch["image"].shape[0])
    with torch.no_grad(), trainer.precision_plugin.forward_context():
        preds = pl_module(batch["image"][:n]).argmax(1)
    images = denormalize(batch["image"][:n].float().cpu().numpy())
    truth = batch["mask"][:n].cpu().numpy().astype(np.uint8)
    return images, truth, preds.cpu().numpy().astype(np.uint8)


class PredictionImages(L.Callback):
    """Saves ``input | ground truth | prediction`` rows for the first validation/test batch.

    Predictions come from the module's ``forward`` on those few images.
    """

    def __init__(self, dirpath: str | Path, labels: str, num_images: int = 4) -> None:
        self.dirpath = Path(dirpath)
        self.scheme = get_scheme(labels)
        self.num_images = image_count("callbacks.prediction_images.num_images", num_images)

    @rank_zero_only
    def _save(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict,
              name: str) -> None:
        images, truth, preds = first_predictions(trainer, pl_module, batch, self.num_images)
        rows = [
            prediction_panel(i, t, p, self.scheme)
            for i, t, p in zip(images, truth, preds, strict=True)
        ]
        self.dirpath.mkdir(parents=True, exist_ok=True)
        path = self.dirpath / f"{name}.png"
        cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and not trainer.sanity_checking:
            self._save(trainer, pl_module, batch, f"val_epoch{trainer.current_epoch:03d}")

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0:
            self._save(trainer, pl_module, batch, "test")


def score_rows(metrics: Mapping[str, Any], scheme: LabelScheme, stage: str = "test"
               ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Per-class rows and headline scores from logged ``{stage}/...`` metrics.

    A class is present when its F1 was logged (the module logs the classes the ground
    truth has); an absent class has no F1 or IoU (None: an empty cell, JSON null, as in
    ``faceparse.eval``'s report), never a 0 that would pull a column mean down, and is
    left out of the means.
    """
    rows = []
    for name in scheme.class_names:
        present = f"{stage}/f1/{name}" in metrics
        rows.append({
            "class": name, "present": present,
            "f1": float(metrics[f"{stage}/f1/{name}"]) if present else None,
            "iou": float(metrics[f"{stage}/iou/{name}"]) if present else None,
        })
    headline = {k: float(metrics.get(f"{stage}/{k}", math.nan)) for k in HEADLINE}
    return rows, headline


class ScoreReport(L.Callback):
    """After testing: a per-class table in the terminal, ``scores.csv`` and ``scores.json``."""

    def __init__(self, dirpath: str | Path, labels: str) -> None:
        self.dirpath = Path(dirpath)
        self.scheme = get_scheme(labels)

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if "test/f1_mean" not in trainer.callback_metrics:
            return
        rows, headline = score_rows(trainer.callback_metrics, self.scheme)
        self.dirpath.mkdir(parents=True, exist_ok=True)
        with open(self.dirpath / "scores.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        # bf16 moves a few pixels' labels: faceparse.eval's report says what it ran in too
        scores = {"scheme": self.scheme.name, "precision": str(trainer.precision), **headline,
                  "classes": rows}
        # atomic: a sweep report may read it while the job is still running
        write_atomic(self.dirpath / "scores.json", json.dumps(scores, indent=2).encode())
        table = Table(title=f"test scores ({self.scheme.name} labels, {trainer.precision})")
        for col in ("class", "F1", "IoU"):
            table.add_column(col, justify="left" if col == "class" else "right")
        for row in rows:
            absent = not row["present"]
            table.add_row(row["class"], "-" if absent else f"{row['f1']:.4f}",
                          "-" if absent else f"{row['iou']:.4f}")
        table.add_section()
        for key, value in headline.items():
            table.add_row(key, "nan" if math.isnan(value) else f"{value:.4f}", "")
        Console().print(table)
