"""The report folder: a terminal table, metrics.json/.csv, the confusion matrix, worst images.

Every file states the protocol (``metrics.json`` in words and fields), so a number copied
out of it can be compared with a paper's only when the protocols agree. A reused ``out=``
holds one evaluation's files: a grid this report does not make (``worst=0``) is removed.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from faceparse.evaluation.protocol import Protocol
from faceparse.evaluation.score import EvalResult, WorstImage
from faceparse.labels import LabelScheme, colorize
from faceparse.metrics import HEADLINE

__all__ = ["metrics_json", "write_report", "confusion_figure", "worst_grid"]


def _num(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def metrics_json(result: EvalResult, scheme: LabelScheme, protocol: Protocol) -> dict[str, Any]:
    """Headline and per-class scores, the raw confusion matrix and the protocol.

    A class neither in the truth nor predicted has no F1 or IoU (``null``; an empty CSV
    cell, ``-`` in the table): a 0 there would read as a class the model got all wrong,
    and pull down any mean taken over the column."""
    s = result.scores
    gt, pred = result.confusion.sum(1), result.confusion.sum(0)
    return {
        "protocol": protocol.to_json(),
        **{key: _num(s[key]) for key in HEADLINE},
        "per_class": {
            name: {"f1": _num(s["f1"][i]) if gt[i] + pred[i] else None,
                   "iou": _num(s["iou"][i]) if gt[i] + pred[i] else None,
                   "present": bool(s["present"][i]), "gt_pixels": int(gt[i])}
            for i, name in enumerate(scheme.class_names)
        },
        "confusion": result.confusion.long().tolist(),
        "worst_images": [{"name": w.name, "f1_mean": w.f1} for w in result.worst],
    }


CSV_COLUMNS = ("class", "f1", "iou", "present", "gt_pixels", "pixel_acc")
# the column each headline score belongs in: f1_mean is a mean F1, miou a mean IoU
HEADLINE_COLUMN = {"f1_mean": "f1", "miou": "iou", "pixel_acc": "pixel_acc"}


def _write_csv(path: Path, report: dict[str, Any]) -> None:
    """One row per class, then one per headline score named in ``class``, its value in the
    column of its kind (``miou`` under ``iou``), so a reader of ``iou`` never gets an F1."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, CSV_COLUMNS, restval="")
        writer.writeheader()
        for name, row in report["per_class"].items():
            writer.writerow({"class": name, **row})
        for key in HEADLINE:
            writer.writerow({"class": key, HEADLINE_COLUMN[key]: report[key]})


def confusion_figure(confusion: np.ndarray, scheme: LabelScheme, path: Path) -> None:
    """Row-normalised matrix (each truth row sums to 1; empty rows stay 0) with names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = confusion.sum(1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros_like(confusion, dtype=float),
                           where=rows > 0)
    n = len(scheme.class_names)
    fig, ax = plt.subplots(figsize=(2 + 0.5 * n, 1.5 + 0.5 * n))
    im = ax.imshow(normalised, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(n), scheme.class_names, rotation=90)
    ax.set_yticks(range(n), scheme.class_names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    for (r, c), value in np.ndenumerate(normalised):
        if value >= 0.005:
            ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if value > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("confusion, row-normalised")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def worst_grid(worst: list[WorstImage], scheme: LabelScheme, min_side: int = 128
               ) -> np.ndarray:
    """Rows of photo | truth | prediction, worst first, 4 px white gaps; tiles smaller than
    ``min_side`` are enlarged by whole pixels (nearest) so small inputs stay readable."""
    rows = []
    for item in worst:
        factor = -(-min_side // min(item.photo.shape[:2]))
        tiles = [item.photo, colorize(item.truth, scheme), colorize(item.prediction, scheme)]
        tiles = [t.repeat(factor, 0).repeat(factor, 1) for t in tiles]
        gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([tiles[0], gap, tiles[1], gap, tiles[2]], axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(rows[:-1], axis=0)


def print_table(report: dict[str, Any], console: Console | None = None) -> None:
    table = Table(title=f"{report['protocol']['dataset']} / {report['protocol']['split']}")
    for column in ("class", "F1", "IoU", "in truth"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, row in report["per_class"].items():
        table.add_row(name, *(f"{row[k]:.4f}" if row[k] is not None else "-"
                              for k in ("f1", "iou")), "yes" if row["present"] else "no")
    table.add_section()
    for key in HEADLINE:
        table.add_row(key, f"{report[key]:.4f}" if report[key] is not None else "-", "", "")
    (console or Console()).print(table)


def write_report(out_dir: str | Path, result: EvalResult, scheme: LabelScheme,
                 protocol: Protocol) -> dict[str, Any]:
    """Write every report file into ``out_dir``, print the table; return the JSON dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = metrics_json(result, scheme, protocol)
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    _write_csv(out / "metrics.csv", report)
    (out / "protocol.txt").write_text(protocol.describe() + "\n")
    confusion_figure(result.confusion.double().numpy(), scheme, out / "confusion.png")
    if result.worst:
        Image.fromarray(worst_grid(result.worst, scheme)).save(out / "worst_images.png")
    else:  # an earlier report's grid in a reused out= would show another model's images
        (out / "worst_images.png").unlink(missing_ok=True)
    print_table(report)
    return report
