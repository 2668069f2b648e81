"""Names a sweep gives its parts: a job's folder from its overrides, safe as one folder
name, and the W&B group its jobs share.

Hydra's ``override_dirname`` joins a job's overrides as they are: a path value
(``data.root=/data/CelebAMask-HQ``) nests the job folder several levels deep, and a dozen
overrides pass the file system's 255-byte limit ("File name too long" before any job runs).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

__all__ = ["MAX_NAME_BYTES", "job_folder", "sweep_group"]

MAX_NAME_BYTES = 200  # below the usual 255-byte limit, leaving room for the job number


def job_folder(number: object, overrides: str) -> str:
    """``<number>_<overrides>`` with each ``/`` as ``~``; a name over :data:`MAX_NAME_BYTES`
    keeps its start and ends with a hash of the whole (the job's ``.hydra/overrides.yaml``
    holds them all)."""
    name = f"{number}_{overrides}".replace("/", "~") if overrides else str(number)
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    head = name.encode()[:MAX_NAME_BYTES - 12].decode(errors="ignore")
    return f"{head}__{digest}"


def sweep_group(name: str) -> str:
    """The W&B group of this job: ``name`` for a single run; in a sweep, ``name/<sweep
    folder>`` (``train/2026-11-28_18-40-12_123456``, ``train/optuna_search``), so two grids
    or studies of one task never share a group, and a resumed study keeps its own."""
    if not HydraConfig.initialized():
        return name
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN:
        return name
    return f"{name}/{Path(str(hydra.sweep.dir)).name}"
