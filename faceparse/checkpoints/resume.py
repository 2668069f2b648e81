"""Starting a run from a checkpoint: resume it exactly, or initialise the weights from it.

The RNG streams (Python, NumPy, torch, CUDA) travel in our checkpoints as plain data, so a
resumed run draws the same shuffles, augmentations and dropout masks as one that never
stopped.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from faceparse.checkpoints.format import NET_PREFIX, config_differences, scheme_from_metadata
from faceparse.checkpoints.load import load_net_weights, refuse_other_labels
from faceparse.checkpoints.read import CheckpointFile, CheckpointKind, read_checkpoint
from faceparse.labels import LabelScheme
from faceparse.models.weights import check_state

log = logging.getLogger(__name__)

__all__ = ["ResumePoint", "start_from", "rng_states", "set_rng_states"]


@dataclass(frozen=True)
class ResumePoint:
    """A run checkpoint for Lightning to resume, and what the command's options are checked
    against before it does: the saved optimizer's parameter groups and the schedules, without
    their tensors (a ViT-L checkpoint is not read, or held, a second time for them)."""

    path: str
    optimizer_setup: dict[str, Any]


def start_from(ckpt_path: str | Path, net: nn.Module, scheme: LabelScheme,
               trust_pickle: bool = False) -> ResumePoint | None:
    """Read ``ckpt_path`` once and act on what it is.

    Our full checkpoint is returned for Lightning to resume (optimizer, loops, RNG), once
    its classes, keys, shapes and values are checked against ``net`` and ``scheme`` (one
    ValueError naming the file, not Lightning's traceback or a run in the wrong classes);
    any other supported file (a decoder-only export, the original project's) initialises
    ``net`` now and ``None`` is returned: training starts afresh from those weights.
    Anything else is refused.
    """
    checkpoint = read_checkpoint(ckpt_path, trust_pickle)
    _warn_other_config(checkpoint, net)
    if checkpoint.kind is CheckpointKind.RUN:
        _check_run(checkpoint, net, scheme)
        log.info("resuming the run saved in %s", checkpoint.path)
        return ResumePoint(str(checkpoint.path), _optimizer_setup(checkpoint.contents))
    log.info("%s holds weights without a training state: initialising the net from it",
             checkpoint.path)
    load_net_weights(net, checkpoint, scheme)
    return None


def _optimizer_setup(contents: Mapping[str, Any]) -> dict[str, Any]:
    """The saved optimizers' parameter groups and the schedules, without the moment tensors."""
    states = contents.get("optimizer_states") or []
    return {"optimizer_states": [{"param_groups": state.get("param_groups", [])}
                                 for state in states if isinstance(state, Mapping)],
            "lr_schedulers": contents.get("lr_schedulers") or []}


def _warn_other_config(checkpoint: CheckpointFile, net: nn.Module) -> None:
    """Options that keep every shape load silently: say which differ from the file's."""
    saved = (checkpoint.metadata or {}).get("model")
    built = getattr(net, "config", None)
    if not isinstance(saved, Mapping) or not isinstance(built, Mapping):
        return
    differences = config_differences(saved, built)
    if differences:
        log.warning("%s was saved from a net configured otherwise (its weights fit, but were "
                    "trained for its own options; set them back if that was not meant): %s",
                    checkpoint.path, "; ".join(differences))


def _check_run(checkpoint: CheckpointFile, net: nn.Module, scheme: LabelScheme) -> None:
    """What Lightning's resume would not check, or would check with a long traceback."""
    meta = checkpoint.metadata
    refuse_other_labels(checkpoint.path, scheme_from_metadata(meta) if meta else scheme, scheme)
    state = {k.removeprefix(NET_PREFIX): v for k, v in checkpoint.state_dict.items()
             if k.startswith(NET_PREFIX)}
    check_state(net.state_dict(), state, f"checkpoint {checkpoint.path}")


def rng_states() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as plain data (loadable with ``weights_only``)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        # this process's device only: a run saved on 8 GPUs resumes on fewer
        "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() else [],
    }


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_states` captured, so a resumed run draws the same numbers."""
    random.setstate(states["python"])
    n = states["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        cuda = states["cuda"]  # older checkpoints hold one state per GPU the saver saw
        device = torch.cuda.current_device()
        torch.cuda.set_rng_state(cuda[device] if device < len(cuda) else cuda[0])
