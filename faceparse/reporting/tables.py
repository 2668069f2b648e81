"""One row per job, sorted by the headline test score: a markdown table and a CSV.

Jobs that stopped early (failed, interrupted) are ranked after the finished ones even when
they left test scores. Jobs whose scores are not comparable (other label schemes or
precisions) get a column saying which, and a warning, rather than a silent ranking.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from faceparse.data.io import write_atomic
from faceparse.metrics import HEADLINE, metric_mode
from faceparse.reporting.collect import UNREADABLE, Job
from faceparse.training.job_status import INTERRUPTED

__all__ = ["SORT_KEY", "job_names", "job_rows", "mixed_warnings", "sort_note", "val_best_note",
           "write_csv", "write_markdown"]

SORT_KEY = f"test/{HEADLINE[0]}"
STOPPED = ("failed", INTERRUPTED)  # jobs that did not finish: never ranked among those that did
# run_stats.json key, table column and divisor, in table order (null in the file: not measured)
_STATS = (("params_total", "params_M", 1e6), ("params_trainable", "trainable_M", 1e6),
          ("train_images_per_s", "train_img_per_s", 1.0), ("peak_memory_mb", "peak_mem_MB", 1.0))


def _sort_value(job: Job) -> tuple[bool, bool, float, bool, float]:
    """Finished jobs by score, then stopped jobs with a score, then jobs without one; ties
    and jobs without a test score (a ``test=false`` sweep, one still training) by their
    ``val_best``, the lowest first for a loss. Equal jobs keep their (job number) order."""
    value = job.test.get(HEADLINE[0], math.nan)
    scored = not math.isnan(value)
    validated = not math.isnan(job.val_best)
    val = job.val_best * (-1 if metric_mode(job.metric) == "min" else 1) if validated else 0.0
    return (scored and job.status not in STOPPED, scored, value if scored else -math.inf,
            validated, val)


def sort_note(rows: list[dict[str, Any]]) -> str:
    """What the rows are sorted by: the headline test score, or ``val_best`` when no job
    has test scores (yet)."""
    if any(not math.isnan(r[SORT_KEY]) for r in rows):
        return f"sorted by {SORT_KEY}, ties by val_best"
    return f"sorted by val_best (no job has {SORT_KEY})"


def _num(value: Any) -> float:
    """A run_stats number as a float, NaN when missing (absent or null)."""
    return math.nan if value is None else float(value)


def _counts(values: list[str]) -> dict[str, int]:
    """How many jobs have each known value (an empty one: the job left no scores)."""
    counts: dict[str, int] = {}
    for value in values:
        if value:
            counts[value] = counts.get(value, 0) + 1
    return counts


def _mixed(jobs: list[Job]) -> dict[str, dict[str, int]]:
    """The score attributes (``scheme``, ``precision``) that differ between jobs."""
    found = {"scheme": _counts([j.scheme for j in jobs]),
             "precision": _counts([j.precision for j in jobs])}
    return {key: counts for key, counts in found.items() if len(counts) > 1}


def mixed_warnings(jobs: list[Job]) -> list[str]:
    """One line per way the jobs' scores are not comparable; [] when they are."""
    wording = {"scheme": ("label schemes", "their scores are not comparable"),
               "precision": ("precisions", "their scores are not strictly comparable "
                                           "(bf16 moves pixels)")}
    lines = []
    for key, counts in _mixed(jobs).items():
        what, why = wording[key]
        listed = ", ".join(f"{value}: {n}" for value, n in counts.items())
        lines.append(f"jobs use different {what} ({listed}): {why}")
    metrics = _counts([j.metric for j in jobs])
    if len(metrics) > 1:
        listed = ", ".join(f"{value}: {n}" for value, n in metrics.items())
        lines.append(f"jobs optimise different metrics ({listed}): each val_best is its "
                     "own job's val_metric")
    return lines


def val_best_note(jobs: list[Job]) -> str:
    """What the ``val_best`` column holds: which metric, and which way is best."""
    metrics = {j.metric for j in jobs}
    if len(metrics) != 1:
        return ("val_best: each job's best value of its own val_metric (the lowest for a "
                "loss, else the highest); finished jobs: the best checkpoint's.")
    metric = metrics.pop()
    way = "lowest" if metric_mode(metric) == "min" else "highest"
    return f"val_best: each job's {way} {metric}; finished jobs: the best checkpoint's."


def job_names(jobs: list[Job]) -> dict[Path, str]:
    """Each job's name in the table: its folder's name (``3``), or, when a folder holds
    several sweeps whose job numbers repeat, its path below their common folder
    (``2026-01-02_10-00-00/3``), so no two rows read the same."""
    names = {job.folder: job.folder.name for job in jobs}
    if len(set(names.values())) == len(names):
        return names
    common = Path(os.path.commonpath([job.folder for job in jobs]))
    return {job.folder: job.folder.relative_to(common).as_posix() for job in jobs}


def job_rows(jobs: list[Job], swept: list[str]) -> list[dict[str, Any]]:
    """Rows best first (see :func:`_sort_value`): job, status, the scheme and precision when
    they differ between jobs, swept values, val_best (and val_metric when the jobs'
    metrics differ), scores, per-class F1, parameters, training images/s, peak memory,
    error."""
    classes = list(dict.fromkeys(c for job in jobs for c in job.class_f1))
    names = job_names(jobs)
    mixed = _mixed(jobs)
    per_row_metric = len({job.metric for job in jobs}) > 1
    rows = []
    for job in sorted(jobs, key=_sort_value, reverse=True):
        row: dict[str, Any] = {"job": names[job.folder], "status": job.status}
        row.update({key: getattr(job, key) for key in mixed})
        row.update({key: job.overrides.get(key, "") for key in swept})
        row["val_best"] = job.val_best
        if per_row_metric:
            row["val_metric"] = job.metric
        row.update({f"test/{k}": job.test.get(k, math.nan) for k in HEADLINE})
        row.update({f"f1/{c}": job.class_f1.get(c, math.nan) for c in classes})
        row.update({column: _num(job.stats.get(key)) / unit for key, column, unit in _STATS})
        row["error"] = job.error
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    """A markdown cell: measured numbers (floats) to 4 significant digits; strings, such as
    swept values (the jobs' override strings), as typed: ``optimizer.lr=0.00012345`` must
    not read as a value no job used."""
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def write_markdown(rows: list[dict[str, Any]], path: Path, title: str,
                   notes: Sequence[str] = (), warnings: Sequence[str] = ()) -> str:
    """Write the table (``notes`` and ``warnings`` above it, the failed, interrupted and
    unreadable jobs' errors under it) as markdown; return the text."""
    columns = [c for c in rows[0] if c != "error"]
    lines = [f"# {title}", "", f"{len(rows)} jobs, {sort_note(rows)}.", *notes, ""]
    if warnings:
        lines += [f"**Warning:** {w}." for w in warnings] + [""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in columns) + " |" for r in rows]
    sections = (("failed", "## Failed jobs"),
                (INTERRUPTED, "## Interrupted jobs (ended by a signal or an exit)"),
                (UNREADABLE, "## Unreadable jobs (a job file half-written or corrupt)"))
    for status, heading in sections:
        listed = [r for r in rows if r["status"] == status]
        if listed:
            lines += ["", heading, ""]
            lines += [f"- job {r['job']}: {_cell(r['error'])}" for r in listed]
    running = [r["job"] for r in rows if r["status"] == "running"]
    if running:
        lines += ["", f"Running (or stopped without a status): jobs {', '.join(running)}"]
    text = "\n".join(lines) + "\n"
    write_atomic(path, text.encode())  # a failed write leaves the earlier report whole
    return text


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, table.getvalue().encode())
