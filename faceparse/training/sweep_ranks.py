"""DDP ranks of one sweep job start as that job, not as the sweep.

Lightning starts ranks > 0 of a one-machine DDP run by running the command again
(``sys.argv``) with ``hydra.run.dir`` set to ``HydraConfig.get().run.dir``. In a multirun
that command is the sweep's: ``-m`` and the sweep lists, or ``hparams_search=optuna``
(which sets ``hydra.mode: MULTIRUN``). Each other rank then ran a sweep of its own, with its
own sweep folder and, for Optuna, its own trials, joining rank 0's process group with
other hyperparameters. While :func:`ranks_join_this_job` holds, the command Lightning
repeats is this job's overrides as one run (``hydra.mode=RUN``), and the folder it names
is this job's; after it, the next job of the sweep in this process starts its own ranks.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from omegaconf import read_write

from faceparse.training.distributed import is_rank_zero
from faceparse.training.job_status import in_multirun

__all__ = ["LAUNCHER_VARIABLES", "job_command", "ranks_join_this_job"]

# where the config comes from (Hydra's command-line flags): the ranks need the same
_CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")
# hydra.* keys Lightning or this module gives the ranks: the sweep's would clash
_SET_FOR_RANKS = {"hydra.run.dir", "hydra.job.name", "hydra.output_subdir", "hydra.mode"}
# what Lightning's subprocess launcher sets in rank 0's environment
LAUNCHER_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextmanager
def ranks_join_this_job() -> Iterator[None]:
    """Inside, in a multirun job's rank 0, Lightning starts the other ranks as this job."""
    if not in_multirun() or not is_rank_zero():
        yield
        return
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    argv, run_dir, environ = sys.argv[:], hydra.run.dir, dict(os.environ)
    sys.argv = job_command(argv, list(hydra.overrides.hydra), list(hydra.overrides.task))
    with read_write(hydra):
        hydra.run.dir = hydra.runtime.output_dir
    try:
        yield
    finally:  # the next job of the sweep, in this process, starts from the sweep's again
        sys.argv = argv
        with read_write(hydra):
            hydra.run.dir = run_dir
        _forget_process_group(environ)


def job_command(argv: list[str], hydra_overrides: list[str], task_overrides: list[str]
                ) -> list[str]:
    """The command line of one sweep job as a single run: the sweep's config source
    (``--config-dir``, ``--config-name``, ``--config-path``), its ``hydra.*`` overrides but
    those Lightning sets for the ranks (and ``hydra.mode``), the job's overrides, one run."""
    flags, rest = [], iter(argv[1:])
    for arg in rest:
        if arg in _CONFIG_FLAGS:
            flags += [arg, next(rest, "")]
        elif arg.startswith(tuple(f"{flag}=" for flag in _CONFIG_FLAGS)):
            flags.append(arg)
    kept = [o for o in hydra_overrides if o.split("=", 1)[0].lstrip("~+") not in _SET_FOR_RANKS]
    return [argv[0], *flags, *kept, *task_overrides, "hydra.mode=RUN"]


def _forget_process_group(before: dict[str, str]) -> None:
    """Leave no trace of this job's ranks for the next job in this process: Lightning's
    launcher takes the ``LOCAL_RANK`` and ``WORLD_SIZE`` it set for this job as ranks
    started for the next one (and would start none), and a process group still open would
    be this job's. Only the launcher's variables go back: others (a logger's) are left."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for key in LAUNCHER_VARIABLES:
        if key in before:
            os.environ[key] = before[key]
        else:
            os.environ.pop(key, None)
