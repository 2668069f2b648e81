"""Read what each job of a Hydra multirun folder left: overrides, status, scores, run stats.

Only files on disk are used (no W&B), so a running or partly failed sweep reports too:
a job without ``status.json`` or ``scores.json`` is still running (or was killed). A job
file that cannot be read or parsed (a half-written one, a disk error) does not stop the
report: that job is listed as ``unreadable`` with the file and the reason, and a warning.

Each job's validation value is the best of its own ``optimized_metric`` (from
``status.json``, else its ``.hydra/config.yaml``), the lowest for a loss: a sweep may mix
metrics, and a running job's value must not be another metric than a finished one's.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from faceparse.metrics import HEADLINE, metric_mode
from faceparse.training.job_status import INTERRUPTED, STATUS_FILE

__all__ = ["DELETED", "UNREADABLE", "Job", "collect_jobs", "swept_keys"]

log = logging.getLogger(__name__)
T = TypeVar("T")
UNREADABLE = "unreadable"  # the status of a job with a file the report cannot read
DELETED = "<deleted>"  # the value of a key a Hydra override ``~key`` deleted
DEFAULT_METRIC = f"val/{HEADLINE[0]}"  # conf/train.yaml's optimized_metric
# what reading or parsing a half-written or corrupt job file raises
_READ_ERRORS = (OSError, ValueError, TypeError, KeyError, csv.Error, yaml.YAMLError)


@dataclass
class Job:
    """One job folder of a sweep and what it recorded."""

    folder: Path
    overrides: dict[str, str]
    status: str              # finished | failed | interrupted | running | unreadable
    error: str = ""
    val_best: float = math.nan                    # best validation value of ``metric``
    metric: str = DEFAULT_METRIC                  # the job's optimized_metric
    scheme: str = ""                              # label scheme of the test scores
    precision: str = ""                           # precision the test scores were run in
    test: dict[str, float] = field(default_factory=dict)       # headline test scores
    class_f1: dict[str, float] = field(default_factory=dict)   # test F1 of present classes
    stats: dict[str, Any] = field(default_factory=dict)        # run_stats.json


class _Problems(list[str]):
    """The unreadable files of one job, each as ``unreadable <file>: <reason>``."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder

    def read(self, name: str, read: Callable[[Path], T], default: T) -> T:
        """``read(folder / name)``; on a read or parse error, a warning naming the file,
        the reason noted, and ``default``."""
        path = self.folder / name
        try:
            return read(path)
        except _READ_ERRORS as error:
            reason = str(error) if type(error) is ValueError else f"{type(error).__name__}: {error}"
            log.warning("%s: cannot read it (%s); job %s is reported as unreadable",
                        path, reason, self.folder.name)
            self.append(f"unreadable {name}: {reason}")
            return default


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, {} when there is no such file."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {type(data).__name__}, not an object")
    return data


def _override(line: str) -> tuple[str, str]:
    """``key=value`` (``+``/``++`` prefixes dropped) as (key, value); a delete override
    ``~key`` or ``~key=value`` as (key, :data:`DELETED`)."""
    key, _, value = line.partition("=")
    if key.startswith("~"):
        return key[1:], DELETED
    return key.lstrip("+"), value


def _overrides(path: Path) -> dict[str, str]:
    lines = yaml.safe_load(path.read_text()) or []
    return dict(_override(str(line)) for line in lines)


def _config_metric(path: Path) -> str | None:
    """``optimized_metric`` of a job's ``.hydra/config.yaml``; None without one."""
    if not path.is_file():
        return None
    config = yaml.safe_load(path.read_text()) or {}
    if not isinstance(config, dict):
        raise ValueError(f"a YAML {type(config).__name__}, not a mapping")
    metric = config.get("optimized_metric")
    return str(metric) if metric else None


def _best_logged(path: Path, metric: str) -> float:
    """The best value of ``metric`` in a ``csv/metrics.csv`` so far (the lowest for a loss,
    :func:`~faceparse.metrics.metric_mode`); NaN if none."""
    if not path.is_file():
        return math.nan
    with open(path, newline="") as f:
        values = [float(r[metric]) for r in csv.DictReader(f) if r.get(metric)]
    values = [v for v in values if not math.isnan(v)]
    best = min if metric_mode(metric) == "min" else max
    return best(values, default=math.nan)


def _status_value(status: dict[str, Any]) -> float | None:
    """The sweep value ``status.json`` recorded, None when it has none."""
    value = status.get("value")
    return None if value is None else float(value)


def _stats(path: Path) -> dict[str, Any]:
    """``run_stats.json``, its numbers checked: the report divides and plots them."""
    stats = _read_json(path)
    for key in ("params_total", "params_trainable", "train_images_per_s", "peak_memory_mb"):
        if not isinstance(stats.get(key, 0), int | float | None):
            raise ValueError(f"{key} is {stats[key]!r}, not a number")
    return stats


def _scores(scores: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """Headline test scores and the per-class F1 of present classes in ``scores.json``."""
    test = {k: float(scores[k]) for k in HEADLINE if k in scores}
    class_f1 = {c["class"]: float(c["f1"]) for c in scores.get("classes", []) if c["present"]}
    return test, class_f1


def _job(folder: Path) -> Job:
    files = _Problems(folder)
    overrides = files.read(".hydra/overrides.yaml", _overrides, {})
    status = files.read(STATUS_FILE, _read_json, {})
    scores = files.read("scores.json", _read_json, {})
    test, class_f1 = files.read("scores.json", lambda _: _scores(scores), ({}, {}))
    stats = files.read("run_stats.json", _stats, {})
    metric = str(status.get("optimized_metric") or "")  # older status files lack it
    if not metric:
        metric = files.read(".hydra/config.yaml", _config_metric, None) or DEFAULT_METRIC
    val_best = files.read(STATUS_FILE, lambda _: _status_value(status), None)
    if val_best is None:
        val_best = files.read("csv/metrics.csv", lambda p: _best_logged(p, metric), math.nan)
    state = str(status.get("status") or ("finished" if scores else "running"))
    # a job that failed or was interrupted stays so, with its error, whatever else is
    # unreadable: "unreadable" would rank its scores among the finished jobs'
    stopped = state in ("failed", INTERRUPTED)
    error = "; ".join(filter(None, [str(status.get("error", "")) if stopped or not files
                                    else "", *files]))
    return Job(folder=folder, overrides=overrides,
               status=UNREADABLE if files and not stopped else state, error=error,
               val_best=val_best,
               metric=metric, scheme=str(scores.get("scheme") or ""),
               precision=str(scores.get("precision") or ""), test=test, class_f1=class_f1,
               stats=stats)


def _natural(folder: Path) -> tuple[tuple[int, str], ...]:
    """Sort key of a job folder: runs of digits as numbers, in any part of its path (job 2
    before job 10, ``2_fusion=gate`` before ``10_fusion=sum``)."""
    return tuple((int(piece), "") if piece.isdigit() else (-1, piece)
                 for part in folder.parts for piece in re.split(r"(\d+)", part) if piece)


# faceparse's commands that leave no training records (Hydra's job.name is the module's
# name unless hydra.job.name= renames a training job, which stays a training job)
OTHER_COMMANDS = frozenset({"eval", "predict", "export", "export_decoder", "stats", "prepare",
                            "bench"})


def _command(folder: Path) -> str | None:
    """The faceparse command that ran in ``folder`` (Hydra's ``job.name``: ``train``,
    ``eval``, ...); None when its ``.hydra/hydra.yaml`` does not say."""
    try:
        hydra = yaml.safe_load((folder / ".hydra" / "hydra.yaml").read_text())
        name = hydra["hydra"]["job"]["name"]
    except (*_READ_ERRORS, AttributeError):
        return None
    return str(name) if name else None


def collect_jobs(sweep_dir: str | Path) -> list[Job]:
    """Every training job folder (one holding ``.hydra/overrides.yaml``) under
    ``sweep_dir``, job 2 before job 10. Jobs of another command (an ``eval`` multirun)
    leave no training records: they are left out with a warning, and a folder of only
    such jobs is refused rather than reported as jobs forever running."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: no such sweep folder (give the multirun folder, "
                                "e.g. multirun/train/<date>)")
    folders = sorted({p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")},
                     key=_natural)
    if not folders:
        raise FileNotFoundError(f"{sweep_dir}: no job folder in it (none has "
                                ".hydra/overrides.yaml); is it a Hydra multirun folder?")
    commands = {folder: _command(folder) for folder in folders}
    others = {f: c for f, c in commands.items() if c in OTHER_COMMANDS}
    if len(others) == len(folders):
        names = ", ".join(sorted({f"faceparse.{c}" for c in others.values()}))
        raise ValueError(f"{sweep_dir}: its jobs ran {names}, not faceparse.train; the report "
                         "reads training sweeps (an eval job's scores are in its metrics.json)")
    for folder, command in others.items():
        log.warning("%s: a faceparse.%s job, not a training job: left out of the report",
                    folder, command)
    return [_job(folder) for folder in folders if folder not in others]


def swept_keys(jobs: list[Job]) -> list[str]:
    """The override keys whose value differs between jobs, in command-line order."""
    keys = list(dict.fromkeys(k for job in jobs for k in job.overrides))
    return [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]
