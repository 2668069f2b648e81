"""Callbacks that write what a user looks at after a run: pictures and score tables."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_only
from rich.console import Console
from rich.table import Table

from faceparse.data.transforms import denormalize
from faceparse.labels import colorize

__all__ = ["PredictionImages", "ScoreReport", "prediction_panel"]


def prediction_panel(
    image: np.ndarray, truth: np.ndarray, pred: np.ndarray, scheme: Any
) -> np.ndarray:
    """One row ``input | ground truth | prediction`` as an RGB uint8 array."""
    return np.concatenate([image, colorize(truth, scheme), colorize(pred, scheme)], axis=1)


class PredictionImages(L.Callback):
    """Saves ``input | ground truth | prediction`` rows for the first validation/test batch."""

    def __init__(self, dirpath: str | Path, num_images: int = 4) -> None:
        self.dirpath = Path(dirpath)
        self.num_images = num_images

    @rank_zero_only
    def _save(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
              batch: dict, name: str) -> None:
        n = min(self.num_images, batch["image"].shape[0])
        images = denormalize(batch["image"][:n].float().cpu().numpy())
        truth = batch["mask"][:n].cpu().numpy().astype(np.uint8)
        preds = outputs["preds"][:n].cpu().numpy().astype(np.uint8)
        rows = [
            prediction_panel(i, t, p, pl_module.scheme)
            for i, t, p in zip(images, truth, preds, strict=True)
        ]
        self.dirpath.mkdir(parents=True, exist_ok=True)
        path = self.dirpath / f"{name}.png"
        cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and not trainer.sanity_checking:
            self._save(trainer, pl_module, outputs, batch, f"val_epoch{trainer.current_epoch:03d}")

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0:
            self._save(trainer, pl_module, outputs, batch, "test")


class ScoreReport(L.Callback):
    """After testing: a per-class table in the terminal, ``scores.csv`` and ``scores.json``."""

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        scores = pl_module.last_scores.get("test")
        if scores is None:
            return
        names = pl_module.scheme.class_names
        rows = [
            {"class": n, "present": bool(scores["present"][i]),
             "f1": float(scores["f1"][i]), "iou": float(scores["iou"][i])}
            for i, n in enumerate(names)
        ]
        headline = {k: float(scores[k]) for k in ("f1_mean", "miou", "pixel_acc")}
        self.dirpath.mkdir(parents=True, exist_ok=True)
        with open(self.dirpath / "scores.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        (self.dirpath / "scores.json").write_text(
            json.dumps({"scheme": pl_module.scheme.name, **headline, "classes": rows}, indent=2)
        )
        table = Table(title=f"test scores ({pl_module.scheme.name} labels)")
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
