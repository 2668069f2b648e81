"""Reading weight files for the backbones: data-only, strict, and clear about what is wrong.

Files come from the internet, so they are read data-only (:mod:`faceparse.safe_load`).
Loading is strict: a missing file says where the weights are published and where to put
them, a file for another architecture names the expected and found shapes, and every
missing or unexpected key is reported through ``logging``. The renaming of outside key
layouts lives beside each backbone (``vgg.py``, ``dinov3.py``) as a pure filter.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from faceparse.safe_load import safe_load

log = logging.getLogger(__name__)

__all__ = ["StateDict", "CHECKPOINT_DIR_HINT", "load_state_dict_file", "load_strict"]

StateDict = dict[str, torch.Tensor]
CHECKPOINT_DIR_HINT = "checkpoints/ (paths.checkpoint_dir in conf/paths/default.yaml)"


def load_state_dict_file(
    path: str | Path, what: str, source: str, trust_pickle: bool = False
) -> StateDict:
    """Read a weights file data-only; name the file and where to get it when it is missing."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} weights not found at {path}. Download {source} and put the file there "
            f"(by default in {CHECKPOINT_DIR_HINT}), or point the config at it."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = safe_load(path, trust_pickle=trust_pickle)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` that names shape mismatches, logs and refuses missing/unexpected keys."""
    own = module.state_dict()
    wrong = [
        f"{k}: expected {tuple(own[k].shape)}, found {tuple(v.shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    for kind, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            log.error("%s: %d %s keys: %s", source, len(keys), kind, ", ".join(keys[:20]))
    if wrong or missing or unexpected:
        raise ValueError(
            f"{source} does not fit this model: {len(wrong)} shape mismatches {wrong[:3]}, "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:5]}"
        )
    module.load_state_dict(state, strict=True)
