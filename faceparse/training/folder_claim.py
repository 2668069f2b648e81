"""One job at a time in a run folder: ``.run_claim``, created exclusively.

The checks that keep a run's folder to itself (a new run refuses a folder holding a run, a
``resume=`` continues only the run there) read the folder, so two commands given the same
``hydra.run.dir`` (or two ``resume=`` of one run) at the same instant could both pass them
and train into one folder. The claim is the atomic step before those checks: the job that
writes the folder creates :data:`CLAIM_FILE` with ``O_EXCL``, records its host, process and
start in it, and removes it when it ends, however it ends.

A claim left by a job that died without removing it (killed, out of memory) is taken over
when it names a process of this host that is gone, and by a requeued SLURM job (whose
earlier attempt it is). A claim from another host cannot be checked: it is refused with the
file's name, to delete when no job uses the folder.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from faceparse.training.distributed import is_rank_zero, requeued

__all__ = ["CLAIM_FILE", "claim_run_folder"]

CLAIM_FILE = ".run_claim"


def _this_job() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}


def _read(path: Path) -> dict[str, Any]:
    try:
        claim = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return claim if isinstance(claim, dict) else {}


def _gone(claim: dict[str, Any]) -> bool:
    """Whether the claim names a process of this host that no longer runs."""
    pid = claim.get("pid")
    if claim.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    return False


def _create(path: Path, claim: dict[str, Any]) -> bool:
    """Create the claim file, only if it does not exist; whether it was created."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        json.dump(claim, file)
    return True


def _take(path: Path, claim: dict[str, Any]) -> None:
    """Claim the folder, or a ValueError naming the job that holds it."""
    if _create(path, claim):
        return
    held = _read(path)
    if requeued() or _gone(held):
        path.unlink(missing_ok=True)  # a dead job's: the next line races a live one fairly
        if _create(path, claim):
            return
        held = _read(path)
    since = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(held["started"]))
             if isinstance(held.get("started"), (int, float)) else "an unknown time")
    raise ValueError(
        f"the run folder {path.parent} is in use by another job (process {held.get('pid')} "
        f"on {held.get('host')}, since {since}): start this run in another folder "
        f"(hydra.run.dir=<new folder>), or wait for that job; if no job uses the folder "
        f"(one killed on another machine), delete {path}"
    )


@contextmanager
def claim_run_folder(folder: Path) -> Iterator[None]:
    """Hold ``folder`` for this job while the block runs (the rank that writes it claims it;
    the others share it)."""
    if not is_rank_zero():
        yield
        return
    path = folder / CLAIM_FILE
    folder.mkdir(parents=True, exist_ok=True)
    claim = _this_job()
    _take(path, claim)
    try:
        yield
    finally:
        if _read(path) == claim:  # never another job's
            path.unlink(missing_ok=True)
