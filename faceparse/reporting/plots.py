"""PNG plots of a sweep: the headline score against each swept parameter, and the per-class
F1 of the best jobs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from faceparse.reporting.tables import SORT_KEY  # noqa: E402

__all__ = ["plot_classes", "plot_params"]


def _as_number(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _category_order(name: str) -> tuple[int, float, str]:
    """Categories of a swept key: numbers by value (1e-4 before 0.001), then the others."""
    number = _as_number(name)
    return (0, number, "") if number is not None else (1, 0.0, name)


def _plotted(rows: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """The score the plots show and the rows that have it: the headline test score, else
    (a ``test=false`` sweep, or none tested yet) ``val_best``."""
    for key in (SORT_KEY, "val_best"):
        having = [r for r in rows if not math.isnan(r[key])]
        if having:
            return key, having
    return SORT_KEY, []


def plot_params(rows: list[dict[str, Any]], swept: list[str], folder: Path) -> list[Path]:
    """One scatter per swept key (log x for positive numbers spanning over 10x, categories
    as positions); returns the written files, none when no job has a score to plot."""
    score, scored = _plotted(rows)
    paths = []
    for key in swept if scored else []:
        values = [r[key] for r in scored]
        numbers = [_as_number(v) for v in values]
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        if numbers and all(n is not None for n in numbers):
            ax.scatter(numbers, [r[score] for r in scored])
            if min(numbers) > 0 and max(numbers) / min(numbers) > 10:
                ax.set_xscale("log")
        else:
            names = sorted(set(map(str, values)), key=_category_order)
            ax.scatter([names.index(str(v)) for v in values], [r[score] for r in scored])
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_xlabel(key)
        ax.set_ylabel(score)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = folder / f"param_{key.replace('/', '_')}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def _job_bars(ax: Any, xs: list[float], heights: list[float], width: float,
               label: str) -> None:
    """One job's bars; a missing F1 (NaN: the class is not in its test truth) is left out
    and marked "n/a", not drawn as a bar of 0, which would read as a class never found."""
    ax.bar(xs, heights, width, label=label)  # matplotlib draws no bar for a NaN height
    for x, height in zip(xs, heights, strict=True):
        if math.isnan(height):
            ax.text(x, 0.01, "n/a", rotation=90, ha="center", va="bottom", fontsize=7,
                    color="gray")


def _short(name: str, limit: int = 32) -> str:
    """A job name for a legend: ``ablation_fusion``'s folder names run to 200 characters."""
    return name if len(name) <= limit else name[: limit - 3] + "..."


def plot_classes(rows: list[dict[str, Any]], folder: Path, best: int = 3) -> Path | None:
    """Grouped bars of the per-class test F1 of the ``best`` top jobs; None without scores."""
    top = [r for r in rows if not math.isnan(r[SORT_KEY])][:best]
    classes = [c.removeprefix("f1/") for c in rows[0] if c.startswith("f1/")] if rows else []
    if not top or not classes:
        return None
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(classes)), 3.5))
    width = 0.8 / len(top)
    for i, row in enumerate(top):
        _job_bars(ax, [x + i * width for x in range(len(classes))],
                  [float(row[f"f1/{c}"]) for c in classes], width,
                  f"job {_short(str(row['job']))} ({row[SORT_KEY]:.3f})")
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(classes))], classes,
                  rotation=40, ha="right")
    ax.set_ylabel("test F1")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = folder / "classes_best.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
