"""Every training job leaves ``status.json`` in its run folder: running, finished, failed or
interrupted.

In a sweep one bad job (an exception, an out-of-memory, a refused combination) must not end
the whole multirun: Hydra's basic sweeper re-raises a job's exception. So in multirun mode
the failure is written down (type, message, traceback) and the job returns ``None``, which
the Optuna sweeper records as a failed trial and the basic/launcher sweeps simply keep.
A single run still raises, so its user sees the error. A job ended from outside (SIGTERM,
which Lightning raises as a ``SystemExit``; Ctrl-C, which Lightning turns into
``sys.exit(1)``; submitit's ``sys.exit(-1)``) is written down as ``interrupted`` and the
exit goes on: otherwise its status would read ``running`` forever. Every status names the
job's ``optimized_metric``, so the report compares each job's validation value by its own
metric, the right way up (a loss lowest).

A job that continues a run (``resume=``) writes into that run's folder; until the resume is
accepted it writes nothing there, so a refused command cannot mark a finished run failed.
"""

from __future__ import annotations

import json
import logging
import math
import time
import traceback
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from faceparse.data.io import write_atomic
from faceparse.training.distributed import is_rank_zero
from faceparse.training.folder_claim import claim_run_folder

__all__ = ["INTERRUPTED", "STATUS_FILE", "UNREADABLE_STATUS", "in_multirun", "read_status",
           "record_job", "sweep_value"]

log = logging.getLogger(__name__)
STATUS_FILE = "status.json"
INTERRUPTED = "interrupted"  # ended by a signal or an exit, not by an error of its own
UNREADABLE_STATUS = "unreadable"  # a status.json that is not a JSON object (half-written)


def in_multirun() -> bool:
    """Whether this job is one of a Hydra multirun (sweep)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # no Hydra config: called from Python
        return False


def sweep_value(metric: str | None, metrics: Mapping[str, float]) -> float | None:
    """The value a sweeper optimises: the best checkpoint's ``metric`` when training kept one
    (``best/<metric>``), else the last logged value; None when missing, NaN or infinite (a
    per-class score of a class no validation epoch had: Lightning ranks NaN as -inf)."""
    if not metric:
        return None
    value = metrics.get(f"best/{metric}", metrics.get(metric))
    return None if value is None or not math.isfinite(value) else float(value)


def read_status(folder: Path) -> str | None:
    """The status a job recorded in ``folder`` (``running``, ``finished``, ...); None without
    a ``status.json``, :data:`UNREADABLE_STATUS` when it cannot be read or parsed."""
    path = folder / STATUS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return UNREADABLE_STATUS


def _write(folder: Path, **status: Any) -> None:
    """Atomically: ``faceparse.report`` may read the file while the job rewrites it."""
    if not is_rank_zero():  # one status per run, written by the rank that owns the folder
        return
    write_atomic(folder / STATUS_FILE, json.dumps(status, indent=2).encode())


def record_job(task: Callable[[DictConfig], dict[str, float]], cfg: DictConfig,
               accept: Callable[[DictConfig], DictConfig] | None = None) -> float | None:
    """Run ``task(cfg)`` with its status recorded; return :func:`sweep_value` (None on a
    failure in a multirun, after writing it down).

    ``accept(cfg)``, when given, runs first and returns the config ``task`` runs with: it
    decides whether this job may write into its folder at all (``resume=`` checks the run
    already there). Both run while the job holds the folder
    (:func:`~faceparse.training.folder_claim.claim_run_folder`). What is refused (the
    folder in use by another job, or what ``accept`` refuses) writes no status and leaves
    the folder's files as they were: a single run raises, a multirun job logs the error
    (its log file gets the line) and returns None.
    """
    folder = Path(cfg.paths.output_dir)
    with ExitStack() as held:  # the checks and the run, one job at a time in the folder
        try:
            held.enter_context(claim_run_folder(folder))
            if accept is not None:
                cfg = accept(cfg)
        except Exception as error:
            if not in_multirun():
                raise
            log.error("job refused, %s left as it was: %s: %s", folder,
                      type(error).__name__, error)
            return None
        return _run(task, cfg, folder)


def _ended_by(error: BaseException) -> str:
    """What ended an interrupted job: ``SIGTERMException``, ``KeyboardInterrupt`` or
    ``SystemExit (exit code -1)``; Lightning's ``sys.exit(1)`` on Ctrl-C names the
    ``KeyboardInterrupt`` it replaced, since exit code 1 alone says nothing."""
    name = type(error).__name__
    if not isinstance(error, SystemExit):
        return f"{name}: {error}" if str(error) else name
    said = name if error.code is None else f"{name} (exit code {error.code})"
    cause = error.__context__
    return f"{said} after KeyboardInterrupt" if isinstance(cause, KeyboardInterrupt) else said


# the shell's status for a process ended by SIGTERM (128 + 15)
SIGTERM_EXIT = 143


def _run(task: Callable[[DictConfig], dict[str, float]], cfg: DictConfig, folder: Path
         ) -> float | None:
    """:func:`record_job` once the job holds its folder and was accepted."""
    started = time.time()
    metric = cfg.get("optimized_metric")
    _write(folder, status="running", started=started, optimized_metric=metric)
    try:
        metrics = task(cfg)
    except Exception as error:
        _write(folder, status="failed", started=started, ended=time.time(),
               optimized_metric=metric, error=f"{type(error).__name__}: {error}",
               traceback=traceback.format_exc())
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # an out-of-memory job must not starve the next one
        if not in_multirun():
            raise
        log.error("job failed, recorded in %s: %s: %s", folder / STATUS_FILE,
                  type(error).__name__, error)
        return None
    except BaseException as error:  # SIGTERM, Ctrl-C, an exit: the job ends here
        try:
            _write(folder, status=INTERRUPTED, started=started, ended=time.time(),
                   optimized_metric=metric, error=f"interrupted by {_ended_by(error)}")
        except Exception as unwritten:  # the exit must go on: a full disk must not stop it
            log.error("job interrupted (%s), its status not written: %s",
                      _ended_by(error), unwritten)
        if isinstance(error, SystemExit) and not error.code:
            # Lightning's SIGTERMException is an exit without a code (status 0): a script or
            # scheduler reading the exit status would take the stopped run for a finished one
            raise SystemExit(SIGTERM_EXIT) from error
        raise
    value = sweep_value(metric, metrics)
    _write(folder, status="finished", started=started, ended=time.time(),
           optimized_metric=metric, value=value, metrics=metrics)
    return value
