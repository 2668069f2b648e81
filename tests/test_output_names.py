"""Predict's output names: distinct, and stable when files are added to a folder."""

from __future__ import annotations

from pathlib import Path

from faceparse.inference.listing import output_stems


def names(files: list[str], root: Path = Path("/photos")) -> dict[str, str]:
    paths = [root / f for f in files]
    return {f: s.as_posix() for f, s in zip(files, output_stems(paths, root), strict=True)}


def test_only_clashing_names_change_and_by_their_own_suffix() -> None:
    assert names(["a.jpg", "b.png", "sub/a.jpg"]) == {"a.jpg": "a", "b.png": "b",
                                                      "sub/a.jpg": "sub/a"}
    assert names(["a.jpg", "a.png"]) == {"a.jpg": "a_jpg", "a.png": "a_png"}


def test_adding_a_file_renames_no_other_input() -> None:
    before = names(["a.jpg", "a.png", "b.png"])
    after = names(["a.jpg", "a.png", "a_jpg.png", "b.png"])
    assert {f: after[f] for f in before} == before
    assert after["a_jpg.png"] == "a_jpg_png"
    assert len(set(after.values())) == 4


def test_names_equal_but_for_case_are_numbered_by_file_name() -> None:
    got = names(["a.jpg", "a.JPG", "c.png"])
    assert got == {"a.JPG": "a_jpg_0", "a.jpg": "a_jpg_1", "c.png": "c"}
    assert names(["c.png", "a.jpg", "a.JPG"]) == got  # the listing order does not matter
