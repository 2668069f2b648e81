"""Bad samples under loader workers, and masks that would read as the wrong ids: JPEG
(lossy) masks, 1/2/4-bit grey PNGs; prepared copies in another scheme or lacking samples
prepare skipped, under ``strict``."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from fixtures_data import write_folder
from torch.utils.data import DataLoader

from faceparse.data.io import BadSampleError, read_mask, worker_message
from faceparse.data.prepare import prepare_dataset
from faceparse.data.readers.folder import ImageMaskFolder
from faceparse.data.readers.prepared import StalePreparedError
from faceparse.stats import caption

pytestmark = pytest.mark.usefixtures("torch_single_thread")
REPO_ROOT = Path(__file__).resolve().parents[1]
SPLIT_COUNTS = {"train": 4, "val": 2, "test": 2}


@pytest.fixture
def split_folder(tmp_path: Path) -> Path:
    """train/val/test subfolders of images/ + masks/ (FaceSynthetics ids), and one train
    mask cut short: unreadable."""
    root = tmp_path / "faces"
    for split, count in SPLIT_COUNTS.items():
        write_folder(root / split, count=count)
    bad = root / "train" / "masks" / "photo_002.png"
    bad.write_bytes(bad.read_bytes()[:100])
    return root


def _folder(root: Path, split: str = "train", **kw) -> ImageMaskFolder:
    return ImageMaskFolder(split, root, scheme="facesynthetics", **kw)


# F1: a strict reader's bad sample in a loader worker is its own one-line message


def test_a_strict_bad_sample_from_a_worker_keeps_its_one_line_message(split_folder: Path
                                                                      ) -> None:
    dataset = _folder(split_folder, strict=True)
    with pytest.raises(BadSampleError) as in_process:
        dataset[dataset.ids.index("photo_002")]
    with pytest.raises(BadSampleError) as from_worker:
        list(DataLoader(dataset, batch_size=None, num_workers=1))
    assert str(from_worker.value) == str(in_process.value)
    assert "photo_002.png" in str(from_worker.value) and "\n" not in str(from_worker.value)
    assert "Original Traceback" in from_worker.value.__notes__[0]  # kept for the full trace


def test_worker_message_reads_only_torchs_worker_text() -> None:
    text = ("Caught BadSampleError in DataLoader worker process 3.\nOriginal Traceback (most "
            "recent call last):\n  File \"x.py\", line 1, in f\nfaceparse.data.io."
            "BadSampleError: truncated PNG (no IEND chunk): /d/m.png\n")
    assert worker_message(text) == "truncated PNG (no IEND chunk): /d/m.png"
    assert worker_message("truncated PNG (no IEND chunk): /d/m.png") is None
    assert str(BadSampleError("plain: /d/m.png")) == "plain: /d/m.png"


# the TINY model of tests/conftest.py, on the folder instead of synthetic faces
TINY_FOLDER = ("cnn.arch=vgg11_bn", "vit.size=small", "vit.random_init=true",
               "decoder.decoder_channels=32", "data.image_size=32", "data.batch_size=4",
               "trainer.max_epochs=1", "trainer.accelerator=cpu", "data=folder",
               "data.dataset.scheme=facesynthetics", "data.dataset.prepared_dir=null")


@pytest.mark.slow  # the command's own error line (a subprocess with two loader workers)
def test_strict_training_with_workers_stops_in_one_line_naming_the_file(
        split_folder: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "faceparse.train", *TINY_FOLDER, f"data.root={split_folder}",
         "data.dataset.strict=true", "data.num_workers=2", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0] == (f"error: truncated PNG (no IEND chunk): "
                         f"{split_folder / 'train' / 'masks' / 'photo_002.png'}")
    assert "Traceback" not in result.stderr and "DataLoader worker" not in result.stderr


# F2: JPEG masks are refused, by their bytes and (a folder dataset) by their name


def test_a_mask_whose_bytes_are_jpeg_is_refused_naming_the_file(tmp_path: Path) -> None:
    ids = np.repeat(np.arange(8, dtype=np.uint8), 8).reshape(8, 8)
    path = tmp_path / "m.png"  # a PNG name, JPEG bytes
    path.write_bytes(cv2.imencode(".jpg", ids, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    with pytest.raises(BadSampleError, match=r"mask is a JPEG file; JPEG is lossy.*save masks "
                                             r"as PNG.*: .*m\.png$"):
        read_mask(path)


def test_png_masks_named_jpg_still_read(tmp_path: Path) -> None:
    """The bytes decide, not the name: a PNG of ids saved as ``.jpg`` reads as its ids."""
    ids = np.repeat(np.arange(8, dtype=np.uint8), 8).reshape(8, 8)
    path = tmp_path / "m.jpg"
    path.write_bytes(cv2.imencode(".png", ids)[1].tobytes())
    assert np.array_equal(read_mask(path), ids)


# F3: 1, 2 and 4-bit grey PNG masks: ids to one tool, grey levels to another: refused


def _grey_png(path: Path, values: np.ndarray, depth: int) -> None:
    """A grey PNG of ``depth`` bits per pixel holding ``values`` (packed, as encoders do)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body))
    rows = b"".join(b"\0" + np.packbits(np.unpackbits(row[:, None], axis=1)[:, 8 - depth:]
                                        ).tobytes() for row in values)
    height, width = values.shape
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(
        ">IIBBBBB", width, height, depth, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b""))


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_low_bit_grey_png_masks_are_refused_naming_the_depth(tmp_path: Path, depth: int
                                                             ) -> None:
    """OpenCV read a 1-bit mask's 1 as 255 (ignore), PIL's bool masks mean id 1, optipng's
    1-bit copy of a 0/255 mask means 255: no reading is right for all, so none is made."""
    ids = (np.arange(24, dtype=np.uint8).reshape(3, 8) % (2 ** depth))
    _grey_png(tmp_path / "m.png", ids, depth)
    with pytest.raises(BadSampleError, match=f"mask is a {depth}-bit grey PNG.*save it as an "
                                             f"8-bit PNG of ids: .*m.png$"):
        read_mask(tmp_path / "m.png")


# F5 and F4: prepared copies, under another scheme or lacking what prepare skipped


def test_a_prepared_copy_in_another_scheme_is_refused(split_folder: Path) -> None:
    prepare_dataset(lambda split: _folder(split_folder, split), split_folder / "p", 32,
                    ["val"], workers=0)
    assert _folder(split_folder, "val", prepared_dir=split_folder / "p").prepared is not None
    with pytest.raises(StalePreparedError, match=r"as label scheme 'facesynthetics', not "
                                                 r"data.dataset.scheme=celebamask"):
        ImageMaskFolder("val", split_folder, scheme="celebamask",
                        prepared_dir=split_folder / "p")


def test_strict_stops_on_samples_prepare_skipped(split_folder: Path) -> None:
    prepare_dataset(lambda split: _folder(split_folder, split), split_folder / "p", 32,
                    ["train"], workers=0)
    kept = _folder(split_folder, prepared_dir=split_folder / "p")
    assert kept.prepare_skipped == ["photo_002"] and len(kept) == 3
    with pytest.raises(BadSampleError, match=r"prepare skipped .*photo_002\.png as unreadable"):
        _folder(split_folder, prepared_dir=split_folder / "p", strict=True)


def test_the_stats_caption_counts_samples_prepare_skipped() -> None:
    assert caption(3, 3, 0, 1) == "1 bad sample skipped by prepare, not in the prepared copy"
    assert caption(3, 3, 0) is None
