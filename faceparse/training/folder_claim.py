"""One job at a time in a run folder: ``.run_claim``, created exclusively.

The checks that keep a run's folder to itself (a new run refuses a folder holding a run, a
``resume=`` continues only the run there) read the folder, so two commands given the same
``hydra.run.dir`` (or two ``resume=`` of one run) at the same instant could both pass them
and train into one folder. The claim is the atomic step before those checks: the job that
writes the folder creates :data:`CLAIM_FILE` with ``O_EXCL``, records its host, process and
start in it, and removes it when it ends, however it ends.

Hydra writes ``.hydra/`` (the command's config and overrides) into the folder before the
job starts: a command that the claim then refuses had already overwritten the holder's.
Training therefore claims its folder in Hydra's ``on_run_start`` (:class:`ClaimRunFolder`),
before Hydra writes anything, and the job adopts that claim.

A claim left by a job that died without removing it (killed, out of memory) is taken over
when it names a process of this host that is gone, and by a requeued SLURM job (whose
earlier attempt it is). A claim from another host cannot be checked: it is refused with the
file's name, to delete when no job uses the folder.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from faceparse.training.distributed import is_rank_zero, requeued

__all__ = ["CLAIM_FILE", "ClaimRunFolder", "claim_run_folder", "release_early_claim"]

CLAIM_FILE = ".run_claim"

# the claim :class:`ClaimRunFolder` took before Hydra wrote the folder: (file, contents)
_early: tuple[Path, dict[str, Any]] | None = None


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


class ClaimRunFolder(Callback):
    """Hydra callback (``conf/train.yaml``): claims a single run's folder before Hydra writes
    ``.hydra/`` into it. A folder another job holds is one ``error:`` line, exit code 1, and
    nothing of this command written there."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _early
        if not is_rank_zero():
            return
        path = Path(os.path.abspath(str(config.hydra.run.dir))) / CLAIM_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        claim = _this_job()
        try:
            _take(path, claim)
        except ValueError as error:  # Hydra would turn an exception here into a warning
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(1) from None
        _early = (path, claim)
        atexit.register(release_early_claim)  # a command refused before its job adopts it


def release_early_claim() -> None:
    """Give up the claim :class:`ClaimRunFolder` took, unless the job adopted it."""
    global _early
    if _early is not None:
        path, claim = _early
        _early = None
        if _read(path) == claim:
            path.unlink(missing_ok=True)


@contextmanager
def claim_run_folder(folder: Path) -> Iterator[None]:
    """Hold ``folder`` for this job while the block runs (the rank that writes it claims it,
    or adopts the claim taken before Hydra wrote the folder; the others share it)."""
    global _early
    if not is_rank_zero():
        yield
        return
    path = Path(os.path.abspath(folder)) / CLAIM_FILE
    if _early is not None and _early[0] == path:
        claim, _early = _early[1], None
    else:
        folder.mkdir(parents=True, exist_ok=True)
        claim = _this_job()
        _take(path, claim)
    try:
        yield
    finally:
        if _read(path) == claim:  # never another job's
            path.unlink(missing_ok=True)
