"""Read what each job of a Hydra multirun folder left: overrides, status, scores, run stats.

Only files on disk are used (no W&B), so a running or partly failed sweep reports too:
a job without ``status.json`` or ``scores.json`` is still running (or was killed).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from faceparse.metrics import HEADLINE
from faceparse.training.job_status import STATUS_FILE

__all__ = ["Job", "collect_jobs", "swept_keys"]


@dataclass
class Job:
    """One job folder of a sweep and what it recorded."""

    folder: Path
    overrides: dict[str, str]
    status: str                                   # finished | failed | running
    error: str = ""
    val_best: float = math.nan                    # best validation optimized_metric
    test: dict[str, float] = field(default_factory=dict)       # headline test scores
    class_f1: dict[str, float] = field(default_factory=dict)   # test F1 of present classes
    stats: dict[str, Any] = field(default_factory=dict)        # run_stats.json


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _overrides(folder: Path) -> dict[str, str]:
    lines = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text()) or []
    pairs = (str(line).split("=", 1) for line in lines)
    return {key.lstrip("+~"): value for key, value in pairs}


def _best_logged(folder: Path, metric: str) -> float:
    """The best (max) value of ``metric`` in ``csv/metrics.csv`` so far; NaN if none."""
    path = folder / "csv" / "metrics.csv"
    if not path.is_file():
        return math.nan
    with open(path, newline="") as f:
        values = [float(r[metric]) for r in csv.DictReader(f) if r.get(metric)]
    return max(values, default=math.nan)


def _job(folder: Path) -> Job:
    status = _read_json(folder / STATUS_FILE)
    scores = _read_json(folder / "scores.json")
    metric = status.get("optimized_metric") or f"val/{HEADLINE[0]}"
    value = status.get("value")
    state = status.get("status") or ("finished" if scores else "running")
    return Job(
        folder=folder,
        overrides=_overrides(folder),
        status=state,
        error=status.get("error", ""),
        val_best=float(value) if value is not None else _best_logged(folder, metric),
        test={k: float(scores[k]) for k in HEADLINE if k in scores},
        class_f1={c["class"]: float(c["f1"]) for c in scores.get("classes", []) if c["present"]},
        stats=_read_json(folder / "run_stats.json"),
    )


def collect_jobs(sweep_dir: str | Path) -> list[Job]:
    """Every job folder (one holding ``.hydra/overrides.yaml``) under ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: no such sweep folder (give the multirun folder, "
                                "e.g. multirun/train/<date>)")
    folders = sorted({p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")})
    if not folders:
        raise FileNotFoundError(f"{sweep_dir}: no job folder in it (none has "
                                ".hydra/overrides.yaml); is it a Hydra multirun folder?")
    return [_job(folder) for folder in folders]


def swept_keys(jobs: list[Job]) -> list[str]:
    """The override keys whose value differs between jobs, in command-line order."""
    keys = list(dict.fromkeys(k for job in jobs for k in job.overrides))
    return [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]
