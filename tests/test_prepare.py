"""The prepare step (resumable, atomic, parallel, read by training) and class statistics."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from faceparse.data import prepare as prepare_mod
from faceparse.data.io import BadSampleError
from faceparse.data.prepare import prepare_dataset
from faceparse.data.readers import files as files_mod
from faceparse.data.readers.celebamask import CelebAMaskHQ
from faceparse.data.readers.folder import ImageMaskFolder
from faceparse.data.readers.prepared import PreparedLayout, StalePreparedError
from faceparse.data.stats import class_counts, class_weights, weights_override
from faceparse.labels import get_scheme

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "val", "test")


@pytest.fixture
def celeba(dataset_copies, tmp_path: Path) -> tuple[Path, dict]:
    """A private copy of the CelebAMask-HQ fixture (tests here write into it)."""
    root, expected = dataset_copies["celebamask"]
    shutil.copytree(root, tmp_path / "CelebAMask-HQ")
    return tmp_path / "CelebAMask-HQ", expected


def opener(root: Path, **kwargs):
    return lambda split: CelebAMaskHQ(split, root, labels="celebamask", **kwargs)


def test_prepare_writes_resized_pairs_that_training_reads(celeba) -> None:
    root, expected = celeba
    out = root / "prepared_32"
    reports = prepare_dataset(opener(root), out, 32, SPLITS, workers=0)
    assert {s: r.written for s, r in reports.items()} == {"train": 4, "val": 2, "test": 2}
    layout = PreparedLayout(out)
    assert layout.read_meta()["scheme"] == "celebamask"
    for split in SPLITS:
        raw = CelebAMaskHQ(split, root, labels="celebamask")
        ready = CelebAMaskHQ(split, root, labels="celebamask", prepared_dir=out)
        assert raw.prepared is None and ready.prepared is not None
        assert ready.ids == raw.ids == layout.read_index(split)
        for i, sample_id in enumerate(ready.ids):
            image, mask = ready.load_checked(i)
            assert image.shape == (32, 32, 3) and mask.shape == (32, 32)
            want = cv2.resize(expected[sample_id], (32, 32),
                              interpolation=cv2.INTER_NEAREST_EXACT)  # centre-aligned
            np.testing.assert_array_equal(mask, want)
    # Labels stay native: the same copy serves the ourface target.
    ourface = CelebAMaskHQ("val", root, labels="ourface", prepared_dir=out)
    assert ourface.prepared is not None and ourface[0]["mask"].max() < 11


def test_prepare_resumes_and_redoes_only_missing_files(celeba) -> None:
    root, _ = celeba
    out = root / "prepared_32"
    prepare_dataset(opener(root), out, 32, ["train"], workers=0)
    layout = PreparedLayout(out)
    layout.label_path("train", "2000").unlink()
    report = prepare_dataset(opener(root), out, 32, ["train"], workers=0)["train"]
    assert (report.written, report.reused) == (1, 3)
    with pytest.raises(FileExistsError, match="prepared copy"):
        prepare_dataset(opener(root), out, 64, ["train"], workers=0)  # another size


def test_killed_run_leaves_nothing_counted_as_done(celeba, monkeypatch) -> None:
    """Kill the run at its fifth file rename: no index, no partial file under a final name;
    a rerun completes the copy."""
    root, _ = celeba
    out = root / "prepared_32"
    calls = {"n": 0}
    real_replace = os.replace

    def dying_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(opener(root), out, 32, ["train"], workers=0)
    monkeypatch.setattr(os, "replace", real_replace)
    layout = PreparedLayout(out)
    assert layout.read_index("train") is None
    assert not list(out.rglob("*.tmp"))
    finished = [p for p in (out / "train").rglob("*.*")]
    assert finished and all(cv2.imread(str(p)) is not None for p in finished)
    assert CelebAMaskHQ("train", root, prepared_dir=out).prepared is None  # raw still used
    report = prepare_dataset(opener(root), out, 32, ["train"], workers=0)["train"]
    assert report.written + report.reused == 4 and report.reused >= 1
    assert CelebAMaskHQ("train", root, prepared_dir=out).prepared is not None


def test_prepare_skips_bad_samples_or_stops_in_strict_mode(celeba, caplog) -> None:
    root, _ = celeba
    (root / "CelebA-HQ-img" / "1.jpg").write_bytes(b"not a jpeg")
    report = prepare_dataset(opener(root), root / "p", 32, ["train"], workers=0)["train"]
    assert (report.written, report.skipped) == (3, 1)
    assert "1" not in PreparedLayout(root / "p").read_index("train")
    # The skipped sample is still in the raw listing: not taken as a change since prepare.
    with caplog.at_level(logging.INFO, logger="faceparse.data.readers.files"):
        ready = CelebAMaskHQ("train", root, labels="celebamask", prepared_dir=root / "p")
    assert ready.prepared is not None and len(ready) == 3
    assert f"prepared copy {root / 'p' / 'train'} (3 samples)" in caplog.text
    assert ready.prepare_skipped == ["1"]  # a bad sample of the split, never read here
    assert "1 samples were skipped by prepare as unreadable, e.g. 1" in caplog.text
    with pytest.raises(BadSampleError, match="1.jpg"):
        prepare_dataset(opener(root, strict=True), root / "q", 32, ["train"], workers=0)


@pytest.fixture
def folder(dataset_copies, tmp_path: Path) -> Path:
    """A private copy of the image/mask folder fixture (30 pairs), prepared at 32 px."""
    root = tmp_path / "folder"
    shutil.copytree(dataset_copies["folder"][0], root)
    prepare_dataset(folder_opener(root), root / "p", 32, ["train"], workers=0)
    return root


def folder_opener(root: Path, **kwargs):
    return lambda split: ImageMaskFolder(split, root, scheme="facesynthetics", **kwargs)


def add_samples(root: Path, count: int) -> None:
    for i in range(count):
        for sub in ("images", "masks"):
            shutil.copy(root / sub / f"photo_{i:03d}.png", root / sub / f"new_{i:03d}.png")


def remove_a_train_sample(root: Path) -> None:
    sample_id = folder_opener(root)("train").ids[0]
    for sub in ("images", "masks"):
        (root / sub / f"{sample_id}.png").unlink()


@pytest.mark.parametrize("change, kwargs", [
    (lambda root: add_samples(root, 30), {}),
    (remove_a_train_sample, {}),
    (lambda root: None, {"fractions": {"val": 0.3, "test": 0.3}}),
], ids=["added", "removed", "fractions"])
def test_stale_prepared_copy_is_refused_until_prepared_again(folder, change, kwargs) -> None:
    """A raw listing that changed since prepare (samples added or removed, another split)
    refuses the copy with both folders, both counts and the command; prepare fixes it."""
    root, out = folder, folder / "p"
    made_from = PreparedLayout(out).read_index("train")
    change(root)
    raw = folder_opener(root, **kwargs)("train")
    assert set(raw.ids) != set(made_from)
    with pytest.raises(StalePreparedError) as err:
        folder_opener(root, prepared_dir=out, **kwargs)("train")
    message = str(err.value)
    for part in (str(out / "train"), f"data.root={root}", f"now has {len(raw)} samples",
                 f"made from {len(made_from)}", "python -m faceparse.prepare"):
        assert part in message
    prepare_dataset(folder_opener(root, **kwargs), out, 32, ["train"], workers=0)
    ready = folder_opener(root, prepared_dir=out, **kwargs)("train")
    assert ready.prepared is not None and ready.ids == raw.ids


def test_prepared_copy_in_use_is_logged_and_checked_cheaply(folder, caplog,
                                                            monkeypatch) -> None:
    """An unchanged raw folder: the copy is used, one INFO line names it and its count;
    the check lists file names and decodes nothing."""
    out = folder / "p"
    for reader in ("read_image", "read_mask"):
        monkeypatch.setattr(files_mod, reader, lambda path: pytest.fail(f"decoded {path}"))
    with caplog.at_level(logging.INFO, logger="faceparse.data.readers.files"):
        ready = folder_opener(folder, prepared_dir=out)("train")
    monkeypatch.undo()
    assert ready.prepared is not None and ready.ids == folder_opener(folder)("train").ids
    assert f"reading the prepared copy {out / 'train'} ({len(ready)} samples)" in caplog.text


def test_prepared_copy_without_listing_or_raw_files(folder, caplog) -> None:
    """A copy from before ``listed.txt`` is checked against its index; a copy whose raw
    files are gone (only the copy was kept) is used with a warning that it is unchecked."""
    out = folder / "p"
    PreparedLayout(out).listed_path("train").unlink()
    assert folder_opener(folder, prepared_dir=out)("train").prepared is not None
    add_samples(folder, 30)
    with pytest.raises(StalePreparedError, match="predates the record"):
        folder_opener(folder, prepared_dir=out)("train")
    shutil.rmtree(folder / "images")
    with caplog.at_level(logging.WARNING):
        ready = folder_opener(folder, prepared_dir=out)("train")
    assert ready.prepared is not None and "cannot compare with the raw files" in caplog.text


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_prepare_command_runs_in_parallel(celeba, tmp_path: Path) -> None:
    root, _ = celeba
    result = subprocess.run(
        [sys.executable, "-m", "faceparse.prepare", "data=celebamask", f"data.root={root}",
         "data.image_size=32", "workers=2", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert PreparedLayout(root / "prepared_32").read_index("test") == ["2001", "6002"]
    assert "train: 4 written" in result.stdout + result.stderr


def test_resize_pair_keeps_labels_discrete(rng: np.random.Generator) -> None:
    mask = rng.choice([0, 4, 9], size=(50, 70)).astype(np.uint8)
    image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    out_image, out_mask = prepare_mod.resize_pair(image, mask, 32)
    assert out_image.shape == (32, 32, 3)
    assert set(np.unique(out_mask).tolist()) <= {0, 4, 9}


def test_class_counts_and_weights(dataset_copies) -> None:
    root, expected = dataset_copies["celebamask"]
    ds = CelebAMaskHQ("train", root, labels="ourface")
    counts = class_counts(ds, 11)
    assert counts.sum() == sum(expected[i].size for i in ds.ids)
    assert counts[get_scheme("ourface").index("beard")] == 0
    assert (class_counts(ds, 11, max_samples=2) <= counts).all()
    weights = class_weights(counts, power=1.0)
    assert weights[get_scheme("ourface").index("beard")] == 0
    labelled = counts > 0
    ranked = np.sort(weights[labelled])  # the median frequency's class(es) weigh 1
    n = len(ranked)
    assert ranked[(n - 1) // 2] <= 1 + 1e-9 <= ranked[n // 2] + 2e-9
    assert weights[0] < 1 < weights[labelled].max()  # background common, parts rare
    override = weights_override(weights)
    assert override.startswith("loss.class_weights=[") and override.count(",") == 10


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_stats_command_prints_an_override(dataset_copies, tmp_path: Path) -> None:
    """``python -m faceparse.stats`` as a user runs it: a table and an override to paste."""
    root, _ = dataset_copies["lapa"]
    result = subprocess.run(
        [sys.executable, "-m", "faceparse.stats", "data=lapa", f"data.root={root}",
         "data.num_workers=0", "split=val", f"hydra.run.dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    override = re.search(r"loss\.class_weights=\[([^\]]*)\]", result.stdout)
    assert override and len(override.group(1).split(",")) == 11
    assert "never labelled" in result.stdout  # LaPa has no ears, beard or accessories


def test_a_raw_file_changed_since_is_prepared_again(celeba) -> None:
    """A re-annotated mask (or re-downloaded image) newer than its prepared copy is redone
    by the next prepare; the others are kept."""
    root, _ = celeba
    out = root / "prepared_32"
    prepare_dataset(opener(root), out, 32, ["val"], workers=0)
    raw = CelebAMaskHQ("val", root, labels="celebamask")
    changed = raw.ids[0]
    part = raw.part_path(changed, "hair")
    part.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(part), np.full((64, 64), 255, np.uint8))  # all hair now
    later = PreparedLayout(out).label_path("val", changed).stat().st_mtime_ns + 10**9
    os.utime(part, ns=(later, later))
    again = prepare_dataset(opener(root), out, 32, ["val"], workers=0)["val"]
    assert (again.written, again.redone, again.reused) == (1, 1, len(raw) - 1)
    ready = CelebAMaskHQ("val", root, labels="celebamask", prepared_dir=out)
    hair = get_scheme("celebamask").index("hair")
    assert (ready.load_checked(ready.ids.index(changed))[1] == hair).all()


def test_a_copy_in_an_older_format_is_not_resumed_or_read(celeba, caplog) -> None:
    root, _ = celeba
    out = root / "prepared_32"
    prepare_dataset(opener(root), out, 32, ["val"], workers=0)
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "version": 1}))
    with caplog.at_level(logging.WARNING):
        assert CelebAMaskHQ("val", root, labels="celebamask", prepared_dir=out).prepared is None
    assert "copy format 1, this one reads 2" in caplog.text
    with pytest.raises(FileExistsError, match="prepared copy in format 1, this faceparse "
                                              "writes 2"):
        prepare_dataset(opener(root), out, 32, ["val"], workers=0)
