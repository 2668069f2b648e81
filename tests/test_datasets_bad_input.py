"""Broken downloads: missing files fail clearly, damaged samples are converted or skipped
(with the file named and a count per pass), strict mode stops, workers never die silently."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from faceparse.data.datamodule import SkipReportingLoader
from faceparse.data.io import BadSampleError, DatasetNotFoundError, read_image, read_mask
from faceparse.data.readers.celebamask import CelebAMaskHQ
from faceparse.data.readers.folder import ImageMaskFolder
from faceparse.data.readers.lapa import LaPa
from faceparse.data.transforms import eval_transform

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture
def lapa(dataset_copies, tmp_path: Path) -> Path:
    """A private LaPa copy to damage."""
    shutil.copytree(dataset_copies["lapa"][0], tmp_path / "LaPa")
    return tmp_path / "LaPa"


def first(root: Path, split: str = "train", kind: str = "images") -> Path:
    return sorted((root / split / kind).glob("*.*"))[0]


def test_missing_root_names_everything_and_the_source(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        CelebAMaskHQ("train", tmp_path / "nowhere")
    message = str(err.value)
    for item in ("CelebA-HQ-img", "CelebAMask-HQ-mask-anno", "CelebA-HQ-to-CelebA-mapping.txt",
                 "list_eval_partition.txt", "Expected layout", "switchablenorms/CelebAMask-HQ",
                 "data.root="):
        assert item in message


def test_missing_split_file_is_named_alone(dataset_copies, tmp_path: Path) -> None:
    shutil.copytree(dataset_copies["celebamask"][0], tmp_path / "c")
    (tmp_path / "c" / "list_eval_partition.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="list_eval_partition.txt") as err:
        CelebAMaskHQ("val", tmp_path / "c")
    assert "- " + str(tmp_path / "c" / "CelebA-HQ-img") not in str(err.value)


def test_missing_lapa_split_folder(lapa: Path) -> None:
    shutil.rmtree(lapa / "test")
    with pytest.raises(DatasetNotFoundError, match=r"test/images[\s\S]*jd-opensource"):
        LaPa("test", lapa)
    assert len(LaPa("val", lapa)) == 2


def test_configs_instantiate_without_data_and_fail_at_setup(compose, tmp_path) -> None:
    from hydra.utils import instantiate

    cfg = compose(["data=lapa", f"paths.data_dir={tmp_path}"])
    datamodule = instantiate(cfg.data)  # no files needed yet
    with pytest.raises(DatasetNotFoundError, match="LaPa train split"):
        datamodule.setup("fit")


def test_image_without_mask_is_left_out_or_refused_when_strict(lapa: Path, caplog) -> None:
    first(lapa, kind="labels").unlink()
    with caplog.at_level(logging.WARNING):
        assert len(LaPa("train", lapa)) == 2
    assert "without a mask" in caplog.text
    with pytest.raises(DatasetNotFoundError, match="masks in all"):
        LaPa("train", lapa, strict=True)


def test_two_images_with_one_name_are_named_or_refused_when_strict(tmp_path: Path,
                                                                  caplog) -> None:
    """``a.jpg`` and ``a.png`` would share the mask ``a.png``: one is read, both are named."""
    import fixtures_data as fx

    fx.write_folder(tmp_path / "train", 3)
    photo = tmp_path / "train" / "images" / "photo_001.png"
    twin = photo.with_suffix(".jpg")
    twin.write_bytes(cv2.imencode(".jpg", cv2.imread(str(photo)))[1].tobytes())
    with caplog.at_level(logging.WARNING):
        ds = ImageMaskFolder("train", tmp_path, transform=None, scheme="facesynthetics")
    assert len(ds) == 3 and ds.pairs["photo_001"][0] == twin  # sorted: .jpg comes first
    assert str(photo) in caplog.text and str(twin) in caplog.text
    with pytest.raises(ValueError, match="photo_001.png") as info:
        ImageMaskFolder("train", tmp_path, transform=None, scheme="facesynthetics", strict=True)
    assert str(twin) in str(info.value)


DAMAGE = {
    "corrupt image": lambda root: first(root).write_bytes(b"\xff\xd8 garbage"),
    "truncated image": lambda root: first(root).write_bytes(first(root).read_bytes()[:-300]),
    "unreadable mask": lambda root: first(root, kind="labels").write_bytes(b"\x89PNG\r\n"),
    "size mismatch": lambda root: cv2.imwrite(str(first(root)), np.zeros((20, 90, 3), np.uint8)),
    "ids outside scheme": lambda root: cv2.imwrite(
        str(first(root, kind="labels")), np.full((64, 64), 42, np.uint8)),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_bad_sample_is_skipped_with_its_file_named(lapa: Path, damage: str, caplog) -> None:
    bad = first(lapa).stem
    DAMAGE[damage](lapa)
    ds = LaPa("train", lapa, labels="lapa")
    index = ds.ids.index(bad)
    with caplog.at_level(logging.WARNING):
        sample = ds[index]
    assert bad in caplog.text and "skipping" in caplog.text
    assert ds.skipped.value == 1
    np.testing.assert_array_equal(sample["mask"], ds.load_checked((index + 1) % len(ds))[1])
    with pytest.raises(BadSampleError, match=bad):
        LaPa("train", lapa, strict=True)[index]


def test_truncated_files_are_detected(tmp_path: Path, rng: np.random.Generator) -> None:
    """OpenCV decodes a truncated JPEG into a grey-filled image with only a console warning."""
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    messages = {".jpg": r"truncated JPEG \(no end-of-image marker after the last scan\)",
                ".png": r"truncated PNG \(no IEND chunk\)"}
    for ext, message in messages.items():
        data = cv2.imencode(ext, image)[1].tobytes()
        (tmp_path / f"cut{ext}").write_bytes(data[: len(data) * 3 // 4])
        with pytest.raises(BadSampleError, match=message):  # the message, not the path
            read_image(tmp_path / f"cut{ext}")
    progressive = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    (tmp_path / "ok.jpg").write_bytes(progressive)
    assert read_image(tmp_path / "ok.jpg").shape == (64, 64, 3)


def test_same_aspect_size_mismatch_is_resized(lapa: Path) -> None:
    path = first(lapa)
    image = read_image(path)
    cv2.imwrite(str(path), cv2.resize(image, None, fx=2, fy=2)[..., ::-1])
    ds = LaPa("train", lapa)
    image, mask = ds.load_checked(ds.ids.index(path.stem))
    assert image.shape[:2] == mask.shape and ds.skipped.value == 0


def test_unusual_encodings_are_converted(tmp_path: Path, rng: np.random.Generator) -> None:
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    bgr = rgb[..., ::-1]
    cv2.imwrite(str(tmp_path / "gray.png"), rgb[..., 0])
    cv2.imwrite(str(tmp_path / "rgba.png"), np.dstack([bgr, np.full((16, 16), 7, np.uint8)]))
    cv2.imwrite(str(tmp_path / "deep.png"), bgr.astype(np.uint16) * 257)
    np.testing.assert_array_equal(read_image(tmp_path / "gray.png"), np.dstack([rgb[..., 0]] * 3))
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png"), rgb)

    ids = rng.integers(0, 11, (16, 16)).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "m16.png"), ids.astype(np.uint16))
    cv2.imwrite(str(tmp_path / "m3.png"), np.dstack([ids] * 3))
    cv2.imwrite(str(tmp_path / "colour.png"), np.dstack([ids, ids, ids + 1]))
    cv2.imwrite(str(tmp_path / "wide.png"), ids.astype(np.uint16) * 300)
    np.testing.assert_array_equal(read_mask(tmp_path / "m16.png"), ids)
    np.testing.assert_array_equal(read_mask(tmp_path / "m3.png"), ids)
    with pytest.raises(BadSampleError, match="colour"):
        read_mask(tmp_path / "colour.png")
    with pytest.raises(BadSampleError, match="above 255"):
        read_mask(tmp_path / "wide.png")


def test_folder_of_rgba_and_grayscale_photos(dataset_copies, tmp_path: Path) -> None:
    shutil.copytree(dataset_copies["folder"][0], tmp_path / "f")
    images = sorted((tmp_path / "f" / "images").glob("*.png"))
    cv2.imwrite(str(images[0]), cv2.imread(str(images[0]), cv2.IMREAD_GRAYSCALE))
    cv2.imwrite(str(images[1]), cv2.cvtColor(cv2.imread(str(images[1])), cv2.COLOR_BGR2BGRA))
    ds = ImageMaskFolder("train", tmp_path / "f", scheme="facesynthetics",
                         fractions={"val": 0.0, "test": 0.0})
    for stem in (images[0].stem, images[1].stem):
        image = ds[ds.ids.index(stem)]["image"]
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert ds.skipped.value == 0


def test_loader_reports_skips_from_workers_per_pass(lapa: Path, caplog) -> None:
    DAMAGE["corrupt image"](lapa)
    ds = LaPa("train", lapa, transform=eval_transform(32))
    loader = SkipReportingLoader(ds, batch_size=3, num_workers=1)
    with caplog.at_level(logging.WARNING):
        batches = list(loader)
    assert batches[0]["image"].shape == (3, 3, 32, 32)  # a full batch despite the bad file
    assert "1 bad samples skipped in this pass over LaPa" in caplog.text


class _Exploding(LaPa):
    def load_raw(self, sample_id: str):
        raise ZeroDivisionError("a bug, not bad data")


def test_worker_error_is_raised_with_the_file_named(lapa: Path) -> None:
    loader = torch.utils.data.DataLoader(_Exploding("val", lapa), batch_size=None,
                                         num_workers=1)
    with pytest.raises(RuntimeError, match=r"failed to load .*val/images.*ZeroDivisionError"):
        next(iter(loader))


def test_only_bad_samples_is_an_error(lapa: Path) -> None:
    for image in (lapa / "val" / "images").glob("*.jpg"):
        image.write_bytes(b"")
    with pytest.raises(BadSampleError, match="bad samples in a row"):
        LaPa("val", lapa)[0]
