"""Training photos with an EXIF orientation tag: read as their mask was drawn on them, or
refused by name when nothing tells which way (before, the photo was always turned upright
and a mask drawn on the stored pixels trained every pixel as the wrong class)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from faceparse.data.io import BadSampleError
from faceparse.data.orientation import exif_orientation, read_image_for_mask
from faceparse.data.readers.folder import ImageMaskFolder

HAIR = 10  # ourface id of the bright patch


def _tagged_jpeg(path: Path, height: int, width: int, orientation: int) -> np.ndarray:
    """A dark photo of ``height x width`` stored pixels with a bright top-left patch, tagged;
    returns its stored pixels' patch map."""
    stored = np.full((height, width, 3), 20, np.uint8)
    stored[: height // 3, : width // 4] = 235
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=95, exif=exif.tobytes())
    return stored[..., 0] > 128


def _folder(root: Path, height: int, width: int, drawn_on: str) -> None:
    """One sample per split, the mask drawn on the ``upright`` photo or the ``stored`` one."""
    for split in ("train", "val", "test"):
        patch = _tagged_jpeg(root / split / "images" / "a.jpg", height, width, 6)
        if drawn_on == "upright":  # orientation 6: viewers turn it 90° clockwise
            patch = np.rot90(patch, k=-1)
        mask = np.where(patch, HAIR, 1).astype(np.uint8)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(root / split / "masks" / "a.png")


def _bright_share_in_hair(dataset: ImageMaskFolder) -> float:
    image, mask = dataset.load(0)
    assert image.shape[:2] == mask.shape
    return float((image[mask == HAIR, 0] > 128).mean())


@pytest.mark.parametrize("drawn_on", ["upright", "stored"])
def test_auto_reads_a_tagged_photo_the_way_its_mask_fits(tmp_path: Path, drawn_on) -> None:
    _folder(tmp_path, 32, 48, drawn_on)
    assert _bright_share_in_hair(ImageMaskFolder("train", tmp_path)) == 1.0


def test_a_square_tagged_photo_is_refused_by_name_unless_the_option_says(
        tmp_path: Path) -> None:
    _folder(tmp_path / "up", 40, 40, "upright")
    _folder(tmp_path / "raw", 40, 40, "stored")
    photo = tmp_path / "up" / "train" / "images" / "a.jpg"
    with pytest.raises(BadSampleError, match=rf"{photo} is turned 90° by its EXIF orientation "
                                             r"\(6\).*exif_orientation=apply"):
        ImageMaskFolder("train", tmp_path / "up", strict=True)[0]
    assert _bright_share_in_hair(
        ImageMaskFolder("train", tmp_path / "up", exif_orientation="apply")) == 1.0
    assert _bright_share_in_hair(
        ImageMaskFolder("train", tmp_path / "raw", exif_orientation="ignore")) == 1.0
    assert _bright_share_in_hair(  # the other way round: every patch pixel misses
        ImageMaskFolder("train", tmp_path / "raw", exif_orientation="apply")) == 0.0


def test_untagged_photos_and_bad_options(tmp_path: Path) -> None:
    plain = tmp_path / "plain.jpg"
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(plain)
    assert exif_orientation(plain.read_bytes()) == 1
    assert read_image_for_mask(plain, (8, 16)).shape == (8, 16, 3)
    assert exif_orientation(b"not an image") == 1
    _tagged_jpeg(tmp_path / "t.jpg", 8, 16, 3)
    assert exif_orientation((tmp_path / "t.jpg").read_bytes()) == 3
    with pytest.raises(BadSampleError, match=r"turned 180°"):  # same shape either way
        read_image_for_mask(tmp_path / "t.jpg", (8, 16))
    _folder(tmp_path / "d", 32, 48, "upright")
    with pytest.raises(ValueError, match=r"data.dataset.exif_orientation='sideways': use one "
                                         r"of auto, apply, ignore"):
        ImageMaskFolder("train", tmp_path / "d", exif_orientation="sideways")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_tagged_tiff_reads_as_stored_or_upright_like_a_jpeg(tmp_path: Path,
                                                              orientation: int) -> None:
    """OpenCV turns a TIFF by its orientation tag whatever the flags say: under
    ``exif_orientation=ignore`` the stored pixels come back all the same, and upright reads
    turn it as a JPEG with the same tag is turned."""
    from faceparse.data.io import read_image

    stored = np.random.default_rng(orientation).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    Image.fromarray(stored).save(tmp_path / "p.tif", tiffinfo={0x0112: orientation})
    np.testing.assert_array_equal(read_image(tmp_path / "p.tif", upright=False), stored)
    stored_mask = np.ones((6, 9), np.uint8)
    np.testing.assert_array_equal(
        read_image_for_mask(tmp_path / "p.tif", stored_mask.shape, "ignore"), stored)
    upright = read_image(tmp_path / "p.tif")
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "p.tif")).convert("RGB"))
    np.testing.assert_array_equal(upright, expected)
