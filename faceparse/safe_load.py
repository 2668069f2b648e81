"""Reading untrusted ``torch.save`` files without running pickled code.

Checkpoints and pretrained weights come from the internet, and unpickling can call any
function. Everything is read with ``torch.load(weights_only=True)``, which only rebuilds
tensors and plain containers, plus a short allow-list of data-only classes that Lightning
and Hydra checkpoints contain (hyper-parameter dicts, OmegaConf configs, paths). A file
that needs anything else is refused with the offending name and an explicit opt-in.
A file that is no ``torch.save`` output at all (empty, corrupt, an image, a TorchScript
export) is refused as such, without that opt-in: it would not help and only weakens safety.
"""

from __future__ import annotations

import collections
import io
import pathlib
import pickle
import pickletools
import re
import struct
import typing
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.data import AttributeDict
from omegaconf import DictConfig, ListConfig, base, nodes

from faceparse.onnx_sniff import is_onnx_model
from faceparse.option_values import boolean

__all__ = ["NotACheckpointError", "UnsafeCheckpointError", "check_zip_records", "safe_globals",
           "safe_load"]

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


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
    """A file whose unpickling would construct or call something outside the allow-list.

    Also a ``ValueError``: every command reports a refused file as the bad input it is, one
    ``error:`` line, the way it reports a wrong option.
    """


class NotACheckpointError(ValueError):
    """A file ``torch.load`` cannot read at all: empty, corrupt, another type, TorchScript."""


# What torch's data-only unpickler says when it refuses a class or function reference.
_REFUSED = re.compile(r"GLOBAL (\S+)|new object for|call reduce for|Can only build")
# What reading a file that is no torch.save output raises (the data-only reader, the full
# unpickler and torch's zip reader alike: a truncated zip is an OSError there; the data-only
# reader's KeyError is a memo entry missing, as in a text file starting with "h" or "j",
# the pickle opcodes BINGET / LONG_BINGET).
_READ_ERRORS = (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, struct.error,
                zipfile.BadZipFile, IndexError, OSError, KeyError)
# Pickle opcodes that name a class or function: a pickle with them holds objects.
_REFERENCE_OPS = {"GLOBAL", "STACK_GLOBAL", "INST"}
# A legacy (non-zip) torch.save file's pickles come before its tensor data, within this.
_LEGACY_PICKLES_MAX = 64 << 20
_TORCHSCRIPT = (
    "{path} is a TorchScript archive (what faceparse.export format=torchscript writes): "
    "TorchScript exports are not loaded by predict, eval, export or train; pass the Lightning "
    "checkpoint (.ckpt) it was exported from, or, for predict, the ONNX export "
    "(faceparse.export format=onnx)"
)
_ONNX = (
    "{path} is an ONNX model (what faceparse.export format=onnx writes), not a PyTorch "
    "checkpoint: only faceparse.predict (and faceparse.deploy.load_onnx_parser) run ONNX "
    "models; pass the Lightning checkpoint (.ckpt) it was exported from"
)


def _refusal(path: str | Path, what: str) -> UnsafeCheckpointError:
    """The refusal of a real pickle: why, and the explicit opt-in."""
    return UnsafeCheckpointError(
        f"{path} was refused: it contains {what}, and unpickling it could run arbitrary code. "
        f"Only if you fully trust where the file came from, load it with "
        f"trust_pickle=True (command line: trust_pickle=true)."
    )


@contextmanager
def safe_globals(path: str | Path = "checkpoint") -> Iterator[None]:
    """Allow-list the data-only classes for any ``torch.load(weights_only=True)`` inside.

    Used around Lightning's own loading (resume) too; a refused class or function
    reference becomes an :class:`UnsafeCheckpointError` that says why and how to opt in.
    Other unpickling errors (a file that is not a pickle at all) pass through unchanged.
    """
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            yield
    except pickle.UnpicklingError as error:
        refused = _REFUSED.search(str(error))
        if isinstance(error, UnsafeCheckpointError) or refused is None:
            raise
        name = refused.group(1)
        what = f"a pickled reference to `{name}`" if name else "pickled objects"
        raise _refusal(path, f"{what}, which is not plain data (tensors, numbers, strings, "
                             f"containers)") from error


def safe_load(path: str | Path, trust_pickle: bool = False) -> Any:
    """``torch.load`` on CPU, data-only unless ``trust_pickle``; memory-mapped when possible.

    Memory-mapping means inspecting a checkpoint's keys costs no RAM for its tensors.
    Raises :class:`UnsafeCheckpointError` for pickled objects (the ``trust_pickle`` opt-in
    names them) and :class:`NotACheckpointError` for a file that is no ``torch.save`` output.
    """
    boolean("trust_pickle", trust_pickle)  # bool("no") is True: only True unpickles
    path = Path(path).expanduser()
    mmap = zipfile.is_zipfile(path)
    if mmap and _is_torchscript(path):  # torch.load would run it through torch.jit.load
        raise NotACheckpointError(_TORCHSCRIPT.format(path=path))
    if mmap:
        check_zip_records(path)
    try:
        if trust_pickle:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        with safe_globals(path):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (UnsafeCheckpointError, PermissionError, IsADirectoryError):
        raise  # already says what is wrong with the file
    except (ImportError, AttributeError) as error:  # only the full unpickler imports
        if not trust_pickle:
            raise
        raise _not_importable(path, error) from None
    except _READ_ERRORS as error:
        raise _explain(path, error, trust_pickle) from error


def check_zip_records(path: Path) -> None:
    """Refuse a zip whose records fail their CRC-32: torch's reader never checks them, and
    a download that kept its size and central directory (zeroed or flipped bytes) would
    load wrong weights without a word. Costs about a second per GB."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise NotACheckpointError(f"{path} is damaged: its records cannot be read "
                                  f"({_reason(error)}); get the file again") from None
    if bad is not None:
        raise NotACheckpointError(f"{path} is damaged: record {bad} fails its CRC check "
                                  f"(an incomplete download or a bad disk?); get the file "
                                  f"again")


def _not_importable(path: Path, error: Exception) -> NotACheckpointError:
    """A trusted pickle naming a module or class this environment lacks: say which, and
    that the file came from code not installed here (the project that wrote it?)."""
    missing = getattr(error, "name", None) if isinstance(error, ImportError) else None
    what = f"module `{missing}`" if missing else f"a class ({_reason(error)})"
    return NotACheckpointError(
        f"{path} pickles objects of {what}, which is not importable here (saved by another "
        f"project?): install that code, or re-save the file's state_dict and faceparse "
        f"entries as plain data where it is installed")


def _explain(path: Path, error: Exception, trust_pickle: bool) -> Exception:
    """Why ``path`` could not be read, as one line: pickled objects the data-only reader
    cannot check (``trust_pickle`` would help), or no checkpoint at all (it would not)."""
    references = _pickled_references(path)
    if references and not trust_pickle and isinstance(error, pickle.UnpicklingError):
        return _refusal(path, f"pickled class or function references "
                              f"({', '.join(sorted(references))}) in a form the data-only "
                              f"reader cannot check ({_reason(error)}; a pickle_protocol "
                              f"above 2?)")
    if references is not None:  # a torch.save file that fails further on: damaged
        return NotACheckpointError(f"{path} is a damaged PyTorch checkpoint ({_reason(error)})")
    if path.stat().st_size == 0:
        return NotACheckpointError(f"{path} is not a PyTorch checkpoint: the file is empty")
    if is_onnx_model(path):
        return NotACheckpointError(_ONNX.format(path=path))
    return NotACheckpointError(f"{path} is not a PyTorch checkpoint (corrupt, or another "
                               f"file type; reading it gave: {_reason(error)})")


def _reason(error: Exception) -> str:
    """The gist of a torch.load error, without torch's advice to load with weights_only=False."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
    text = " ".join(text.split())
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


def _is_torchscript(path: Path) -> bool:
    """torch's own test: a TorchScript zip holds ``constants.pkl`` beside ``data.pkl``."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.split("/")[-1] == "constants.pkl" for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _pickled_references(path: Path) -> set[str] | None:
    """The class/function opcodes in a well-formed ``torch.save`` file's pickles, or None
    when the file is not one (then it is not a checkpoint, and trusting it cannot help).

    Only parses the opcodes (:mod:`pickletools`), so nothing in the file runs.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
                return None if name is None else _opcodes(archive.read(name), 1)
        with path.open("rb") as file:  # in memory: a garbled length must not allocate it
            stream = io.BytesIO(file.read(_LEGACY_PICKLES_MAX))
        magic = [arg for op, arg, _ in pickletools.genops(stream) if op.name == "LONG1"]
        if magic != [torch.serialization.MAGIC_NUMBER]:
            return None  # a legacy torch.save file starts with this number's pickle
        return _opcodes(stream, 3)  # protocol version, system info, the object
    except (ValueError, EOFError, OSError, struct.error, zipfile.BadZipFile):
        return None  # pickletools found no well-formed pickle


def _opcodes(data: bytes | io.BytesIO, pickles: int) -> set[str]:
    """Names of the reference opcodes in the next ``pickles`` pickles of ``data``."""
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    found: set[str] = set()
    for _ in range(pickles):
        found |= {op.name for op, _, _ in pickletools.genops(stream)} & _REFERENCE_OPS
    return found
