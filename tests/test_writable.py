"""Output locations: created when missing, refused in one line when something is in the way."""

from __future__ import annotations

from pathlib import Path

import pytest

from faceparse.writable import output_dir, output_file


def test_missing_folders_are_created(tmp_path: Path) -> None:
    assert output_dir(tmp_path / "a" / "b", "out").is_dir()
    target = output_file(tmp_path / "c" / "model.onnx", "out")
    assert target.parent.is_dir() and not target.exists()


def test_a_file_where_a_folder_goes_is_refused(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    with pytest.raises(ValueError, match=r"out=.*taken is a file"):
        output_dir(tmp_path / "taken", "out")
    with pytest.raises(ValueError, match=r"cannot create folder"):
        output_dir(tmp_path / "taken" / "sub", "out")
    with pytest.raises(ValueError, match=r"cannot create folder"):
        output_file(tmp_path / "taken" / "model.onnx", "out")


def test_a_folder_where_a_file_goes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"is a folder: give a file name inside it"):
        output_file(tmp_path, "out")
