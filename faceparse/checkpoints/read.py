"""Read a checkpoint once and say what it is: a run to resume, or weights to start from.

Every user-facing path that takes a ``ckpt_path`` goes through :func:`read_checkpoint`, so
one file is read (data-only, memory-mapped) once, and anything that is neither ours nor
the original FaceParsing project's is refused with a message naming the file.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from faceparse.checkpoints.contents import checked_metadata, checked_state_dict
from faceparse.checkpoints.format import META_KEY, NET_PREFIX
from faceparse.checkpoints.original import check_original_keys, is_original_checkpoint
from faceparse.safe_load import safe_load

__all__ = ["CheckpointKind", "CheckpointFile", "read_checkpoint"]


class CheckpointKind(enum.Enum):
    """What a run does with a checkpoint."""

    RUN = "run"  # our full Lightning checkpoint (optimizer, loops): resume it exactly
    WEIGHTS = "weights"  # weights only (decoder-only export, original project): start from them


@dataclass(frozen=True)
class CheckpointFile:
    """One read checkpoint: its contents, its state dict and what it is."""

    path: Path
    contents: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    kind: CheckpointKind
    original: bool  # the original FaceParsing project's key layout

    @property
    def metadata(self) -> dict[str, Any] | None:
        return self.contents.get(META_KEY)


def read_checkpoint(path: str | Path, trust_pickle: bool = False) -> CheckpointFile:
    """Read ``path`` once (data-only unless ``trust_pickle``) and classify it, or refuse it.

    Every command's refusal is this one: a file that is no ``torch.save`` output (empty,
    corrupt, an image, a TorchScript export) is a ``NotACheckpointError`` (a ValueError)
    naming it, pickled objects an ``UnsafeCheckpointError`` (see :mod:`faceparse.safe_load`).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a checkpoint file: give the .ckpt file "
                         f"(or, where the command takes one, a training run folder)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    contents = safe_load(path, trust_pickle=trust_pickle)
    if not isinstance(contents, dict) or not isinstance(contents.get("state_dict"), Mapping):
        raise ValueError(f"{path} is not a Lightning checkpoint (no state_dict)")
    state = checked_state_dict(contents["state_dict"], path)
    if META_KEY in contents:
        contents = {**contents, META_KEY: checked_metadata(contents[META_KEY], path, META_KEY)}
    original = is_original_checkpoint(state)
    if original:
        check_original_keys(state, path)
    ours = META_KEY in contents or bool(state) and all(k.startswith(NET_PREFIX) for k in state)
    if not ours and not original:
        raise ValueError(
            f"{path} is neither a faceparse checkpoint nor one of the original FaceParsing "
            f"project's (keys like {list(state)[:3]})"
        )
    resumable = ours and "optimizer_states" in contents and "loops" in contents
    kind = CheckpointKind.RUN if resumable else CheckpointKind.WEIGHTS
    return CheckpointFile(path, contents, state, kind, original)
