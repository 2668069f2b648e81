"""A small image/mask folder: every split with a share gets an image, or a clear refusal.

Split by a hash of the file name, a folder of a few images (or even 30, at the default 5%
shares) often hashes none into ``val`` or ``test``; prepare then wrote the train split and
stopped on the empty one with a traceback, leaving a half-prepared copy.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from faceparse.data.prepare import prepare_dataset
from faceparse.data.readers.folder import (
    ImageMaskFolder,
    TooFewImagesError,
    assign_splits,
    hash_split,
)
from faceparse.data.readers.prepared import PreparedLayout

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "val", "test")
SHARES = {"val": 0.05, "test": 0.05}  # conf/data/dataset/folder.yaml


def names(count: int) -> list[str]:
    return [f"photo_{i:03d}" for i in range(count)]


def test_every_split_with_a_share_gets_an_image() -> None:
    assert {hash_split(n, SHARES) for n in names(30)} == {"train", "val"}  # test left empty
    for count in (3, 4, 5, 30):
        splits = assign_splits(names(count), SHARES)
        assert set(Counter(splits.values())) == set(SPLITS), count
        # one image lent to each split the hash left empty, none else moved
        empty = set(SPLITS) - {hash_split(n, SHARES) for n in names(count)}
        lent = [n for n, s in splits.items() if s != hash_split(n, SHARES)]
        assert sorted(splits[n] for n in lent) == sorted(empty), count
    # where the hash reaches every share, it alone decides
    wide = {"val": 0.2, "test": 0.2}
    assert assign_splits(names(30), wide) == {n: hash_split(n, wide) for n in names(30)}
    # a share of 0 asks for no image; no share at all needs only train
    assert set(assign_splits(names(2), {"val": 0.05, "test": 0.0}).values()) == {"train", "val"}
    assert set(assign_splits(names(1), {}).values()) == {"train"}
    with pytest.raises(TooFewImagesError):
        assign_splits(names(2), SHARES)
    assert assign_splits([], SHARES) == {}


def test_a_lent_image_goes_back_once_the_hash_fills_the_share() -> None:
    lent = {n for n, s in assign_splits(names(30), SHARES).items()
            if s != hash_split(n, SHARES)}
    assert len(lent) == 1
    more = names(30) + [f"extra_{i}" for i in range(200)]
    splits = assign_splits(more, SHARES)
    assert splits == {n: hash_split(n, SHARES) for n in more}


def write_faces(root: Path, count: int) -> None:
    import fixtures_data as fx

    fx.write_folder(root, count)


def opener(root: Path):
    return lambda split: ImageMaskFolder(split, root, scheme="facesynthetics")


def test_too_few_images_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    write_faces(tmp_path, 2)
    with pytest.raises(TooFewImagesError, match=r"found 2 image\(s\) with a mask"):
        prepare_dataset(opener(tmp_path), tmp_path / "p", 32, SPLITS, workers=0)
    assert not (tmp_path / "p").exists()


def prepare(root: Path, run: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "faceparse.prepare", "data=folder", f"data.root={root}",
         "data.dataset.scheme=facesynthetics", "data.image_size=32", "workers=1",
         f"hydra.run.dir={run}", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_prepare_command_on_three_images_fills_every_split(tmp_path: Path) -> None:
    """Three images that all hash into train (the default 5% shares): one per split."""
    root = tmp_path / "faces"
    write_faces(root, 3)
    assert {hash_split(n, SHARES) for n in names(3)} == {"train"}
    result = prepare(root, tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    layout = PreparedLayout(root / "prepared_32")
    indexes = {split: layout.read_index(split) for split in SPLITS}
    assert sorted(sum(indexes.values(), [])) == names(3)
    assert all(len(ids) == 1 for ids in indexes.values()), indexes
    for split in SPLITS:  # training reads the copy
        ready = ImageMaskFolder(split, root, scheme="facesynthetics",
                                prepared_dir=root / "prepared_32")
        assert ready.prepared is not None and ready.ids == indexes[split]


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_prepare_command_refuses_too_few_images_in_one_line(tmp_path: Path) -> None:
    root = tmp_path / "faces"
    write_faces(root, 1)
    result = prepare(root, tmp_path / "run")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    for part in (f"data.root={root}", "found 1 image(s)", "add images (at least 3)",
                 "data.dataset.fractions.test=0"):
        assert part in errors[0]
    assert not (root / "prepared_32").exists()  # nothing half-written
    assert not (tmp_path / "run").exists()  # and no run folder: nothing was run


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_prepare_command_without_data_is_one_line_and_no_run_folder(tmp_path: Path) -> None:
    result = prepare(tmp_path / "nowhere", tmp_path / "run")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: image/mask folder train split: missing under data.root=" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_a_prepared_dir_that_cannot_be_made_is_one_line_before_any_work(tmp_path: Path
                                                                        ) -> None:
    """A read-only dataset mount, or a file in the way: named in one line, no traceback."""
    root = tmp_path / "faces"
    write_faces(root, 3)
    (tmp_path / "afile").write_text("")
    result = prepare(root, tmp_path / "run", f"data.dataset.prepared_dir={tmp_path}/afile/sub")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert (f"error: data.dataset.prepared_dir={tmp_path}/afile/sub: cannot create folder "
            f"({tmp_path}/afile is a file)") in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("fractions", "message"), [
    ({"val": "abc"}, r"data.dataset.fractions.val=abc: the share of images held out for val"),
    ({"val": -0.1}, r"data.dataset.fractions.val=-0.1: .* a number from 0 to below 1"),
    ({"val": 0.6, "test": 0.5}, r"holds out everything: val \+ test must stay below 1"),
    ({"train": 0.9}, r"data.dataset.fractions has train: only val and test are held out"),
])
def test_bad_fractions_are_one_line_naming_the_option(tmp_path: Path, fractions, message
                                                      ) -> None:
    """Not a comparison error inside the split, nor 'missing any train sample'."""
    root = tmp_path / "faces"
    write_faces(root, 3)
    with pytest.raises(ValueError, match=message):
        ImageMaskFolder("train", root, scheme="facesynthetics", fractions=fractions)


@pytest.mark.slow  # a whole command in a subprocess: in CI's slow suite (pytest -m slow)
@pytest.mark.parametrize(("option", "message"), [
    ("data.image_size=0", "data.image_size=0: the prepared side in pixels is a whole number"),
    ("workers=abc", "workers=abc: the number of worker processes"),
])
def test_bad_prepare_options_are_one_line_before_anything_is_written(tmp_path: Path, option,
                                                                     message) -> None:
    root = tmp_path / "faces"
    write_faces(root, 3)
    result = prepare(root, tmp_path / "run", option)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"error: {message}" in result.stderr
    assert not list(root.glob("prepared_*")) and not (tmp_path / "run").exists()
