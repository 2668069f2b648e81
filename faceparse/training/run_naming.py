"""A sweep job's folder name from its overrides, safe as one folder name.

Hydra's ``override_dirname`` joins a job's overrides as they are: a path value
(``data.root=/data/CelebAMask-HQ``) nests the job folder several levels deep, and a dozen
overrides pass the file system's 255-byte limit ("File name too long" before any job runs).
"""

from __future__ import annotations

import hashlib

__all__ = ["MAX_NAME_BYTES", "job_folder"]

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
