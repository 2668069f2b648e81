"""Sweep reports: collect every job of a multirun folder, tabulate and plot them."""

from faceparse.reporting.collect import Job, collect_jobs, swept_keys
from faceparse.reporting.plots import plot_classes, plot_params
from faceparse.reporting.tables import (
    SORT_KEY,
    job_rows,
    mixed_warnings,
    val_best_note,
    write_csv,
    write_markdown,
)

__all__ = ["SORT_KEY", "Job", "collect_jobs", "job_rows", "mixed_warnings",
           "plot_classes", "plot_params", "swept_keys", "val_best_note", "write_csv",
           "write_markdown"]
