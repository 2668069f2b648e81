"""Output locations checked before the work that fills them, so a bad one fails in a second.

Exporting a ViT-L takes a minute and scoring a split longer; a user who pointed ``out=`` at
a folder (or a file) should hear so at once, in one line that names the path, not from deep
inside the ONNX writer when the work is done. An output that is the command's own input
is refused (writing it would destroy what is being read), and files are written whole or
not at all (:func:`replacing`).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from faceparse.option_values import path_value

__all__ = ["check_output_dir", "output_dir", "output_file", "refuse_overwriting", "replacing",
           "write_errors_naming"]


def _make_dir(path: Path, option: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ValueError(f"{option}={path}: cannot create folder ({reason})") from None


def output_dir(path: str | Path, option: str) -> Path:
    """The folder ``option`` names, created if missing; refused if a file is in the way."""
    path = check_output_dir(path, option)
    _make_dir(path, option)
    return path


def _beside_name(path: Path, kind: str) -> str:
    """A fresh hidden name beside ``path`` that stays under the file system's name limit
    (255 bytes) for any legal ``path`` name: ``.<its first 40 characters>.<pid>.<hex>.kind``."""
    return f".{path.name[:40]}.{os.getpid()}.{secrets.token_hex(4)}.{kind}"


def check_output_dir(path: str | Path, option: str) -> Path:
    """Refuse a folder that cannot be made, without making it: a refused command (a wrong
    split, a checkpoint it will not read) must not leave a new empty folder behind. Create
    it with :func:`output_dir` once there is something to write."""
    path = path_value(option, path, "a folder name").expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option}={path} is a file: give a folder for the output files")
    existing = next(p for p in (path, *path.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        raise ValueError(f"{option}={path}: cannot create folder ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option}={path}: cannot write there ({existing}: permission "
                         f"denied)")
    return path


def output_file(path: str | Path, option: str, example: str = "model.onnx") -> Path:
    """The file ``option`` names, its folder created (and writable); refused if it is a
    folder (``example``: a file name to suggest inside it), or null (Hydra's ``out=null``)."""
    path = path_value(option, path).expanduser()
    if path.is_dir():
        raise ValueError(f"{option}={path} is a folder: give a file name inside it, "
                         f"e.g. {option}={path / example}")
    folder = path.parent
    _make_dir(folder, option)
    if not os.access(folder, os.W_OK | os.X_OK):  # made, but another user's or read-only
        raise ValueError(f"{option}={path}: cannot write there ({folder}: permission denied)")
    probe = folder / _beside_name(path, "probe")
    try:  # root passes os.access everywhere: /proc or a read-only mount still takes no file
        probe.open("xb").close()
        probe.unlink()
    except OSError as error:
        raise ValueError(f"{option}={path}: cannot write there ({folder}: "
                         f"{error.strerror or error})") from None
    return path


def refuse_overwriting(out: str | Path, source: str | Path, option: str = "out",
                       what: str = "the checkpoint being read") -> None:
    """Refuse ``out`` when it is the file ``source`` (a link or another spelling of it too);
    ``what`` says what ``source`` is to the command."""
    out, source = Path(out).expanduser(), Path(source).expanduser()
    try:
        same = os.path.samefile(out, source)
    except OSError:  # out does not exist yet (or source is gone): compare the names
        same = out.resolve() == source.resolve()
    if same:
        raise ValueError(f"{option}={out} is {what} ({source}): writing it would destroy "
                         f"it; give another file name")


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary file beside ``path`` to write; it becomes ``path`` only if the block ends
    without an error, so a crash never leaves a half-written ``path`` (or a destroyed one).
    The file is created first: a place that cannot hold it is an OSError naming ``path``
    before the work that would fill it, not the writer's own words about the temporary."""
    path = Path(path)
    # a fresh name, not a mkstemp file: created with the usual permissions
    temp = path.with_name(_beside_name(path, "partial"))
    try:  # a folder that takes no file (/proc, a read-only mount) fails now, naming path
        temp.open("xb").close()
    except OSError as error:
        raise OSError(f"cannot write {path}: {error.strerror or error}") from None
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


@contextmanager
def write_errors_naming(path: Path) -> Iterator[Path]:
    """A failed write of ``path`` (a full disk, a file system error) as one OSError naming
    it: the ONNX writer raises OSError, TorchScript's the RuntimeError of torch's zip writer,
    which names neither the file nor the option. Other errors pass unchanged."""
    try:
        yield path
    except OSError as error:
        if error.strerror is None:  # already in words (:func:`replacing`'s)
            raise
        raise OSError(f"cannot write {path}: {error.strerror}") from None
    except RuntimeError as error:
        if not any(word in str(error) for word in ("PytorchStreamWriter", "inline_container")):
            raise
        reason = " ".join(str(error).split())[-160:]
        raise OSError(f"cannot write {path}: {reason}") from None
