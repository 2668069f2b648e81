"""Checking what a checkpoint file holds before anything is built from it.

A file's ``state_dict`` and ``faceparse`` metadata come from outside: a damaged or
hand-edited file must be refused in one line naming it, not fail deep inside the loader
(``'list' object has no attribute 'shape'``) or, worse, load with class names that do not
match the outputs (a mask whose recorded meaning is wrong).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from faceparse.models.weights import StateDict, tensor_state_dict
from faceparse.safe_load import NotACheckpointError

__all__ = ["checked_metadata", "checked_state_dict"]

_REEXPORT = "the file is damaged or was edited by hand; export it again"


def checked_state_dict(state: Mapping[Any, Any], path: Path) -> StateDict:
    """``state`` when it maps names to tensors; one error naming ``path`` otherwise."""
    return tensor_state_dict(state, path)


def checked_metadata(meta: object, path: Path, key: str) -> dict[str, Any] | None:
    """The ``key`` entry of ``path`` when it is well formed (or absent: ``None``).

    Its class names must be a list of strings, one per output of the recorded net, its
    label scheme a string, its image size a positive whole number or null, and the files a
    decoder-only export needs beside it plain file names.
    """
    if meta is None:
        return None
    if not isinstance(meta, Mapping):
        raise _bad(path, f"its {key!r} entry is a {type(meta).__name__}, not a dict")
    meta = dict(meta)
    _check_names(meta, path)
    if not isinstance(meta.get("labels"), str):
        raise _bad(path, f"its labels is {meta.get('labels')!r}, not a label scheme name")
    size = meta.get("image_size")
    if size is not None and (not _whole(size) or size < 1):
        raise _bad(path, f"its image_size is {size!r}, not a positive whole number")
    model = meta.get("model")
    if model is not None and not isinstance(model, Mapping):
        raise _bad(path, f"its model config is a {type(model).__name__}, not a dict")
    _check_class_count(meta, path)
    _check_external(meta.get("decoder_only"), path)
    return meta


def _bad(path: Path, what: str) -> NotACheckpointError:
    return NotACheckpointError(f"{path} has malformed faceparse metadata: {what} ({_REEXPORT})")


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_names(meta: Mapping[str, Any], path: Path) -> None:
    names = meta.get("class_names")
    if (not isinstance(names, list | tuple) or not names
            or not all(isinstance(n, str) for n in names)):
        raise _bad(path, f"its class_names is {names!r:.80}, not a list of class names")


def _check_class_count(meta: Mapping[str, Any], path: Path) -> None:
    """The recorded names must be one per output channel: otherwise every mask written
    with them says the wrong thing about its labels."""
    model = meta.get("model") or {}
    classes = model.get("num_classes")
    if _whole(classes) and classes != len(meta["class_names"]):
        raise NotACheckpointError(
            f"{path} records {len(meta['class_names'])} class names "
            f"({meta.get('labels')!r}) for a net with {classes} outputs (num_classes): the "
            f"names would label its masks wrongly; {_REEXPORT}")


def _check_external(decoder_only: object, path: Path) -> None:
    """A decoder-only export's ``external`` files: plain names of files beside it."""
    if decoder_only is None:
        return
    external = decoder_only.get("external") if isinstance(decoder_only, Mapping) else None
    if not isinstance(external, Mapping):
        raise _bad(path, "its decoder_only entry has no dict of external files")
    for at, spec in external.items():
        if not isinstance(spec, Mapping):
            raise _bad(path, f"decoder_only.external[{at!r}] is not a dict")
        file, keys = spec.get("file"), spec.get("keys")
        if not isinstance(file, str) or file in ("", ".", "..") or Path(file).name != file:
            raise _bad(path, f"decoder_only.external[{at!r}].file is {file!r}, not the "
                             f"name of a file beside it")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise _bad(path, f"decoder_only.external[{at!r}].keys is not a list of names")
        if not isinstance(spec.get("sha256"), str):
            raise _bad(path, f"decoder_only.external[{at!r}].sha256 is not a string")
