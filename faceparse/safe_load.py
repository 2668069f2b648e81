"""Reading untrusted ``torch.save`` files without running pickled code.

Checkpoints and pretrained weights come from the internet, and unpickling can call any
function. Everything is read with ``torch.load(weights_only=True)``, which only rebuilds
tensors and plain containers, plus a short allow-list of data-only classes that Lightning
and Hydra checkpoints contain (hyper-parameter dicts, OmegaConf configs, paths). A file
that needs anything else is refused with the offending name and an explicit opt-in.
"""

from __future__ import annotations

import collections
import pathlib
import pickle
import re
import typing
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.data import AttributeDict
from omegaconf import DictConfig, ListConfig, base, nodes

__all__ = ["UnsafeCheckpointError", "safe_globals", "safe_load"]

# Data-only classes: their unpickling sets attributes and calls no user code. The string
# forms let checkpoints written with older package layouts load into today's classes.
SAFE_GLOBALS: list[Any] = [
    AttributeDict,
    (AttributeDict, "pytorch_lightning.utilities.parsing.AttributeDict"),
    (AttributeDict, "lightning.pytorch.utilities.parsing.AttributeDict"),
    DictConfig,
    ListConfig,
    base.ContainerMetadata,
    base.Metadata,
    nodes.AnyNode,
    nodes.StringNode,
    nodes.IntegerNode,
    nodes.FloatNode,
    nodes.BooleanNode,
    typing.Any,
    dict,
    list,
    int,
    collections.defaultdict,
    collections.OrderedDict,
    pathlib.PosixPath,
    pathlib.PurePosixPath,
]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A file whose unpickling would construct or call something outside the allow-list."""


@contextmanager
def safe_globals(path: str | Path = "checkpoint") -> Iterator[None]:
    """Allow-list the data-only classes for any ``torch.load(weights_only=True)`` inside.

    Used around Lightning's own loading (resume) too; a refusal becomes an
    :class:`UnsafeCheckpointError` that says why and how to opt in.
    """
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            yield
    except pickle.UnpicklingError as error:
        if isinstance(error, UnsafeCheckpointError):
            raise
        found = re.search(r"GLOBAL (\S+)", str(error))
        what = f"a pickled reference to `{found.group(1)}`" if found else "pickled objects"
        raise UnsafeCheckpointError(
            f"{path} was refused: it contains {what}, which is not plain data (tensors, "
            f"numbers, strings, containers) and could run arbitrary code when unpickled. "
            f"Only if you fully trust where the file came from, load it with "
            f"trust_pickle=True (command line: trust_pickle=true)."
        ) from error


def safe_load(path: str | Path, trust_pickle: bool = False) -> Any:
    """``torch.load`` on CPU, data-only unless ``trust_pickle``; memory-mapped when possible.

    Memory-mapping means inspecting a checkpoint's keys costs no RAM for its tensors.
    """
    path = Path(path).expanduser()
    mmap = zipfile.is_zipfile(path)
    if trust_pickle:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    with safe_globals(path):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
