"""Report a sweep: ``python -m faceparse.report <multirun folder> [--out <folder>]``.

Writes ``report.md``, ``report.csv`` and PNG plots (into the sweep folder unless ``--out``):
one row per job sorted by the headline test score, per-class F1, parameters, training
images/s and peak memory; failed, interrupted and running jobs are listed as such, and jobs
whose scores are not comparable (other label schemes, precisions) are warned about. Works
while a sweep still runs. A positional folder rather than a Hydra config: it reads a sweep,
it runs none. A bad folder or output prints one ``error:`` line, like the other commands.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from faceparse.data.io import write_atomic
from faceparse.reporting import (
    collect_jobs,
    job_rows,
    mixed_warnings,
    plot_classes,
    plot_params,
    swept_keys,
    val_best_note,
    write_csv,
    write_markdown,
)
from faceparse.writable import output_dir

__all__ = ["report", "main"]

log = logging.getLogger(__name__)


def report(sweep_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """Write the report of ``sweep_dir``; return the files written."""
    sweep_dir = Path(sweep_dir)
    jobs = collect_jobs(sweep_dir)  # first: a mistyped folder must not be created
    out = output_dir(out, "--out") if out else sweep_dir
    swept = swept_keys(jobs)
    rows = job_rows(jobs, swept)
    warnings = mixed_warnings(jobs)
    for warning in warnings:
        log.warning("%s: %s", sweep_dir, warning)
    try:
        write_markdown(rows, out / "report.md", f"Sweep {sweep_dir}",
                       notes=[val_best_note(jobs)], warnings=warnings)
        write_csv(rows, out / "report.csv")
        files = [out / "report.md", out / "report.csv", *plot_params(rows, swept, out)]
        classes = plot_classes(rows, out)
        files += [classes] if classes else []
        remove_earlier_plots(out, files)
    except OSError as error:  # a read-only sweep folder, a full disk
        reason = error.strerror or type(error).__name__
        raise ValueError(f"cannot write the report into {out} ({reason}); "
                         "give another folder with --out") from None
    return files


# the plots a report wrote, so the next report into the folder removes those it does not
# write again, and never a file of the user's that happens to share their names
PLOTS_WRITTEN = ".report_plots.json"


def remove_earlier_plots(out: Path, files: list[Path]) -> None:
    """Remove the plots the earlier report in ``out`` wrote and this one did not (another
    sweep's keys, no scores any more); note this report's for the next."""
    record = out / PLOTS_WRITTEN
    try:
        earlier = json.loads(record.read_text())
    except (OSError, ValueError):
        earlier = []
    plots = [f.name for f in files if f.suffix == ".png"]
    for name in earlier if isinstance(earlier, list) else []:
        stale = out / str(name)
        if name not in plots and Path(str(name)).name == name and stale.is_file():
            log.info("%s: a plot of the earlier report this one has no data for, removed",
                     stale)
            stale.unlink()
    write_atomic(record, json.dumps(plots).encode())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m faceparse.report", description=__doc__)
    parser.add_argument("sweep_dir", help="a multirun folder, e.g. multirun/train/<date>")
    parser.add_argument("--out", help="where to write the report (default: the sweep folder)")
    args = parser.parse_args(argv)
    try:
        files = report(args.sweep_dir, args.out)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
    print((Path(files[0])).read_text())
    print("wrote " + ", ".join(str(f) for f in files))


if __name__ == "__main__":
    main()
