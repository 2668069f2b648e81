"""Sweep job folder names: one folder each, whatever the overrides hold."""

from __future__ import annotations

from faceparse.training.run_naming import MAX_NAME_BYTES, job_folder


def test_a_path_value_does_not_nest_the_job_folder() -> None:
    assert job_folder(3, "data.root=/data/CelebAMask-HQ__fusion=gate") == (
        "3_data.root=~data~CelebAMask-HQ__fusion=gate")
    assert job_folder(0, "") == "0"


def test_a_long_name_is_cut_with_a_hash_of_the_whole() -> None:
    many = "__".join(f"model.option_{i}=value_{i}" for i in range(40))
    name = job_folder(7, many)
    assert len(name.encode()) <= MAX_NAME_BYTES and name.startswith("7_model.option_0=")
    other = job_folder(7, many.replace("value_39", "value_x"))  # differs past the cut
    assert other != name and other[:150] == name[:150]
    assert job_folder(7, "ü" * 300).encode()  # cut on a character, not inside one
