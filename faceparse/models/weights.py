"""Reading weight files for the backbones: data-only, strict, and clear about what is wrong.

Files come from the internet, so they are read data-only (:mod:`faceparse.safe_load`).
Loading is strict: a missing file says where the weights are published and where to put
them, a file that holds no state dict (a damaged ``.safetensors``, a saved list) says so,
a file for another architecture names the expected and found shapes (in one line; every
missing or unexpected key is logged at DEBUG), and NaN/inf weights (a diverged run) are
refused: they would load silently and predict all background. The renaming of outside key
layouts lives beside each backbone (``vgg.py``, ``dinov3.py``) as a pure filter.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from faceparse.safe_load import NotACheckpointError, UnsafeCheckpointError, safe_load

log = logging.getLogger(__name__)

__all__ = ["StateDict", "CHECKPOINT_DIR_HINT", "BadWeightValuesError", "check_state",
           "load_state_dict_file", "load_strict", "tensor_state_dict"]

StateDict = dict[str, torch.Tensor]
CHECKPOINT_DIR_HINT = "checkpoints/ (paths.checkpoint_dir in conf/paths/default.yaml)"


def load_state_dict_file(
    path: str | Path, what: str, source: str, trust_pickle: bool = False,
    option: str = "the config's weights path", pattern: str = "*",
) -> StateDict:
    """Read a weights file data-only; name the file and where to get it when it is missing
    (``option``: the options that point at it, e.g. ``cnn.weights=``; ``pattern``: its
    expected name, for a folder given instead)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise FileNotFoundError(folder_message(path, f"the {what} weight file", option,
                                               pattern))
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} weights not found at {path}. Download {source} and put the file there "
            f"(by default in {CHECKPOINT_DIR_HINT}), or give its path with {option}."
        )
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        state = safe_load(path, trust_pickle=trust_pickle)
    except UnsafeCheckpointError as error:
        if trust_pickle:
            raise
        raise UnsafeCheckpointError(_resave_advice(str(error), path)) from error
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return tensor_state_dict(state, path)


WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin", ".ckpt")


def folder_message(path: Path, wanted: str, option: str, pattern: str = "*") -> str:
    """Why a folder given where a weight file goes is refused: users pass the folder that
    holds the file, and "not found, put the file there" would be false advice. Names the
    files in it that fit ``pattern`` (the expected file name), as the one to give."""
    try:
        names = sorted(f.name for f in path.glob(pattern) if f.suffix in WEIGHT_SUFFIXES)
    except OSError:  # an unreadable folder: the advice stands without the listing
        names = []
    inside = f" (it holds {', '.join(names[:3])})" if names else ""
    return (f"{path} is a folder{inside}: give {wanted} itself with {option}, "
            f"e.g. {path / (names[0] if names else pattern)}")


def _resave_advice(refusal: str, path: Path) -> str:
    """safe_load's refusal with the way out for a backbone file: no ``trust_pickle`` reaches
    ``cnn.weights``/``vit.weights``, so re-saving its tensors is the one way."""
    why = refusal.split(" Only if you fully trust", 1)[0]
    return (f"{why} Backbone weights are read data-only (trust_pickle is for checkpoints). "
            f"If you fully trust the file, save its tensors as a plain state dict and point "
            f"the config at the copy: python -c \"import torch; m = torch.load('{path}', "
            f"weights_only=False); torch.save(m.state_dict() if hasattr(m, 'state_dict') "
            f"else m, '{path.with_suffix('.plain.pth')}')\"")


def _read_safetensors(path: Path) -> StateDict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if path.stat().st_size == 0:
        raise NotACheckpointError(f"{path} is not a safetensors file: the file is empty")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise NotACheckpointError(f"{path} is not a valid safetensors file (damaged or "
                                  f"incompletely downloaded? {err})") from None


def tensor_state_dict(state: object, path: Path) -> StateDict:
    """``state`` when it maps names to tensors; otherwise say what the file holds instead."""
    if not isinstance(state, Mapping):
        raise NotACheckpointError(f"{path} holds a {type(state).__name__}, not a state dict "
                                  f"(a mapping of parameter names to tensors)")
    wrong = [f"{k!r}: {type(v).__name__}" for k, v in state.items()
             if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if wrong:
        raise NotACheckpointError(f"{path} is not a state dict of tensors: {len(wrong)} "
                                  f"entries are not named tensors ({', '.join(wrong[:3])})")
    return dict(state)


# Float types a weight may be stored in: what training writes, and the usual conversions.
# Others (fp8, ...) are quantised copies whose values the model's floats do not mean.
WEIGHT_FLOATS = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})


class BadWeightValuesError(ValueError):
    """A file whose tensors fit the model's keys and shapes but not its values: another
    dtype kind (a quantised copy) or NaN/inf. Not a question of architecture."""


def _wrong_dtypes(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
                  ) -> list[str]:
    """``key: dtype, expected dtype`` where a float weight comes from a non-float tensor (or
    fp8), or an integer buffer (``num_batches_tracked``) from a float one: ``copy_`` would
    cast the raw numbers without a word."""
    wrong = []
    for key, value in state.items():
        expected = own.get(key)
        if expected is None or expected.is_complex():
            continue
        if expected.is_floating_point():
            bad = value.dtype not in WEIGHT_FLOATS
        else:
            bad = value.is_floating_point() or value.is_complex()
        if bad:
            wrong.append(f"{key} stored in {str(value.dtype).removeprefix('torch.')}, "
                         f"expected {str(expected.dtype).removeprefix('torch.')}")
    return wrong


def _non_finite(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys of floating-point tensors holding NaN or inf (one reduction per tensor)."""
    return [k for k, v in state.items()
            if (v.is_floating_point() or v.is_complex()) and not v.is_meta
            and not bool(torch.isfinite(_checkable(v)).all())]


def _checkable(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``, upcast when torch has no ``isfinite`` for its dtype (fp8)."""
    if tensor.is_floating_point() and tensor.dtype not in WEIGHT_FLOATS:
        return tensor.float()
    return tensor


def check_state(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                source: str) -> None:
    """Refuse ``state`` unless it has exactly ``own``'s keys, shapes, dtype kinds and finite
    values.

    Raises one ValueError naming ``source`` and a few of the keys (the command logs it as
    its one error line); the full key lists go to the DEBUG log. Nothing is loaded: a caller
    that leaves the load to another library (Lightning's resume) checks first.
    """
    wrong = [
        f"{k}: expected {tuple(own[k].shape)}, found {tuple(v.shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    for kind, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            log.debug("%s: %d %s keys: %s", source, len(keys), kind, ", ".join(keys))
    prefix = wrapper_prefix(missing, unexpected)
    if prefix:
        raise ValueError(
            f"{source} does not fit this model: its {len(unexpected)} keys carry the prefix "
            f"{prefix!r} (a DDP/torch.compile wrapper saved whole, e.g. {unexpected[0]}): "
            f"strip {prefix!r} from every key and save the file again"
        )
    if wrong or missing or unexpected:
        raise ValueError(
            f"{source} does not fit this model: {len(wrong)} shape mismatches {wrong[:3]}, "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:5]}"
        )
    dtypes = _wrong_dtypes(own, state)
    if dtypes:
        raise BadWeightValuesError(
            f"{source} holds {len(dtypes)} tensors of the wrong type ({'; '.join(dtypes[:3])}"
            f"{'; ...' if len(dtypes) > 3 else ''}): a quantised or converted copy? use the "
            f"original file (float16, bfloat16 or float32 weights)")
    bad = _non_finite(state)
    if bad:
        raise BadWeightValuesError(f"{source} holds NaN/inf values in {len(bad)} tensors "
                         f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): the run "
                         f"that saved it diverged, or the file is damaged")


def wrapper_prefix(missing: list[str], unexpected: list[str]) -> str | None:
    """The one prefix (``module.``, ``_orig_mod.``) that turns every unexpected key into a
    missing one: a wrapped module saved whole, whose refusal should say so. None if none."""
    if not unexpected or not missing:
        return None
    parts = unexpected[0].split(".")
    wanted = set(missing)
    for cut in range(1, len(parts)):
        prefix = ".".join(parts[:cut]) + "."
        if all(k.startswith(prefix) and k[len(prefix):] in wanted for k in unexpected):
            return prefix
    return None


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` after :func:`check_state`: keys, shapes and finite values."""
    check_state(module.state_dict(), state, source)
    module.load_state_dict(state, strict=True)
