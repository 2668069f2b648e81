"""One row per job, sorted by the headline test score: a markdown table and a CSV."""

from __future__ import annotations

import contextlib
import csv
import math
import os
from pathlib import Path
from typing import Any

from faceparse.metrics import HEADLINE
from faceparse.reporting.collect import UNREADABLE, Job

__all__ = ["SORT_KEY", "job_names", "job_rows", "write_csv", "write_markdown"]

SORT_KEY = f"test/{HEADLINE[0]}"


def _sort_value(job: Job) -> float:
    value = job.test.get(HEADLINE[0], math.nan)
    return -math.inf if math.isnan(value) else value


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
    """Rows best first (jobs without a test score last): job, status, swept values, scores,
    per-class F1, parameters, training images/s, peak memory, error."""
    classes = list(dict.fromkeys(c for job in jobs for c in job.class_f1))
    names = job_names(jobs)
    rows = []
    for job in sorted(jobs, key=_sort_value, reverse=True):
        row: dict[str, Any] = {"job": names[job.folder], "status": job.status}
        row.update({key: job.overrides.get(key, "") for key in swept})
        row["val_best"] = job.val_best
        row.update({f"test/{k}": job.test.get(k, math.nan) for k in HEADLINE})
        row.update({f"f1/{c}": job.class_f1.get(c, math.nan) for c in classes})
        row["params_M"] = job.stats.get("params_total", math.nan) / 1e6
        row["trainable_M"] = job.stats.get("params_trainable", math.nan) / 1e6
        row["train_img_per_s"] = job.stats.get("train_images_per_s") or math.nan
        row["peak_mem_MB"] = job.stats.get("peak_memory_mb", math.nan)
        row["error"] = job.error
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, str) and "." in value:  # a swept number: 4 significant digits
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def write_markdown(rows: list[dict[str, Any]], path: Path, title: str) -> str:
    """Write the table (and the failed and unreadable jobs' errors under it) as markdown;
    return the text."""
    columns = [c for c in rows[0] if c != "error"]
    lines = [f"# {title}", "", f"{len(rows)} jobs, sorted by {SORT_KEY}.", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in columns) + " |" for r in rows]
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        lines += ["", "## Failed jobs", ""]
        lines += [f"- job {r['job']}: {_cell(r['error'])}" for r in failed]
    unreadable = [r for r in rows if r["status"] == UNREADABLE]
    if unreadable:
        lines += ["", "## Unreadable jobs (a job file half-written or corrupt)", ""]
        lines += [f"- job {r['job']}: {_cell(r['error'])}" for r in unreadable]
    running = [r["job"] for r in rows if r["status"] == "running"]
    if running:
        lines += ["", f"Running (or stopped without a status): jobs {', '.join(running)}"]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
