"""Output locations checked before the work that fills them, so a bad one fails in a second.

Exporting a ViT-L takes a minute and scoring a split longer; a user who pointed ``out=`` at
a folder (or a file) should hear so at once, in one line that names the path, not from deep
inside the ONNX writer when the work is done.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["output_dir", "output_file"]


def _make_dir(path: Path, option: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ValueError(f"{option}={path}: cannot create folder ({reason})") from None


def output_dir(path: str | Path, option: str) -> Path:
    """The folder ``option`` names, created if missing; refused if a file is in the way."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option}={path} is a file: give a folder for the output files")
    _make_dir(path, option)
    return path


def output_file(path: str | Path, option: str) -> Path:
    """The file ``option`` names, its folder created if missing; refused if it is a folder."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option}={path} is a folder: give a file name inside it, "
                         f"e.g. {option}={path / 'model.onnx'}")
    _make_dir(path.parent, option)
    return path
