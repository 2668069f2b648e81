"""A prepared copy follows its raw files: a mask edited (even to an older time, as ``unzip``
or ``rsync -a`` leave it), a CelebAMask-HQ part deleted, a Helen soft map rewritten in its
folder. prepare redoes those samples, and until it does, readers read them from the raw
files with a warning instead of the copy's old labels."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from faceparse.data.prepare import prepare_dataset, resize_pair
from faceparse.data.readers.celebamask import CelebAMaskHQ
from faceparse.data.readers.folder import ImageMaskFolder
from faceparse.data.readers.helen import Helen

SIZE = 32


def private(dataset_copies, name: str, tmp_path: Path) -> Path:
    root = tmp_path / name
    shutil.copytree(dataset_copies[name][0], root)
    return root


def mask_of(reader, sample_id: str) -> np.ndarray:
    return reader.load(reader.ids.index(sample_id))[1]


def test_a_deleted_celebamask_part_is_read_raw_then_prepared_again(dataset_copies, tmp_path,
                                                                   caplog) -> None:
    root = private(dataset_copies, "celebamask", tmp_path)
    opener = lambda split, **kw: CelebAMaskHQ(split, root, **kw)  # noqa: E731
    prepare_dataset(opener, root / "p", SIZE, ["train"], workers=0)
    sample = "0"
    part = next(p for p in sorted((root / "CelebAMask-HQ-mask-anno" / "0").glob("00000_*.png"))
                if not p.name.endswith("_skin.png"))
    part.unlink()  # a wrong annotation removed
    truth = mask_of(opener("train"), sample)

    copy = opener("train", prepared_dir=root / "p")
    with caplog.at_level(logging.WARNING):
        read = mask_of(copy, sample)
    np.testing.assert_array_equal(read, truth)  # the raw files, not the copy's old labels
    assert "changed since the prepared copy" in caplog.text
    assert mask_of(copy, copy.ids[1]).shape == (SIZE, SIZE)  # the others: from the copy

    report = prepare_dataset(opener, root / "p", SIZE, ["train"], workers=0)["train"]
    assert (report.redone, report.reused) == (1, len(copy) - 1)
    image = opener("train").load(opener("train").ids.index(sample))[0]
    np.testing.assert_array_equal(mask_of(opener("train", prepared_dir=root / "p"), sample),
                                  resize_pair(image, truth, SIZE)[1])


def test_an_edited_mask_with_an_older_time_is_prepared_again(dataset_copies, tmp_path) -> None:
    """A corrected release unpacked over the old one keeps the archive's old times."""
    root = private(dataset_copies, "folder", tmp_path)
    opener = lambda split, **kw: ImageMaskFolder(split, root, scheme="facesynthetics", **kw)  # noqa: E731
    prepare_dataset(opener, root / "p", SIZE, ["train"], workers=0)
    sample = opener("train").ids[0]
    mask_file = next((root / "masks").glob(f"{sample}.*"))
    edited = np.zeros_like(cv2.imread(str(mask_file), cv2.IMREAD_UNCHANGED))
    assert cv2.imwrite(str(mask_file), edited)
    os.utime(mask_file, ns=(1_546_300_800 * 10**9,) * 2)  # 2019, before the copy
    assert not mask_of(opener("train", prepared_dir=root / "p"), sample).any()
    report = prepare_dataset(opener, root / "p", SIZE, ["train"], workers=0)["train"]
    assert report.redone == 1
    assert not mask_of(opener("train", prepared_dir=root / "p"), sample).any()


def test_a_helen_soft_map_rewritten_in_its_folder_is_prepared_again(dataset_copies,
                                                                    tmp_path) -> None:
    """The original release keeps a sample's maps in a folder whose own time stays put."""
    root = private(dataset_copies, "helen_smith", tmp_path)
    opener = lambda split, **kw: Helen(split, root, **kw)  # noqa: E731
    prepare_dataset(opener, root / "p", SIZE, ["train"], workers=0)
    sample = opener("train").ids[0]
    hair = next((root / "labels" / sample).glob(f"{sample}_lbl10.png"))
    folder_time = hair.parent.stat().st_mtime_ns
    soft = cv2.imread(str(hair), cv2.IMREAD_UNCHANGED)
    assert cv2.imwrite(str(hair), np.full_like(soft, 255))  # hair everywhere
    os.utime(hair.parent, ns=(folder_time, folder_time))
    truth = mask_of(opener("train"), sample)
    np.testing.assert_array_equal(mask_of(opener("train", prepared_dir=root / "p"), sample),
                                  truth)
    assert prepare_dataset(opener, root / "p", SIZE, ["train"], workers=0)["train"].redone == 1
