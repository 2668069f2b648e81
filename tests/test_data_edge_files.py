"""Files real folders hold that a reader must neither refuse wrongly nor read wrongly:
phone JPEGs with a trailer, palette masks, masks tagged with another scheme, names with
spaces, decompression bombs; and prepared copies whose settings changed since."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from faceparse.data.datamodule import FaceDataModule
from faceparse.data.io import (
    BadSampleError,
    MaskSchemeError,
    jpeg_is_complete,
    read_image,
    read_mask,
)
from faceparse.data.prepare import prepare_dataset
from faceparse.data.readers.folder import ImageMaskFolder, hash_split
from faceparse.data.readers.lapa import LaPa
from faceparse.data.readers.prepared import StalePreparedError
from faceparse.inference.outputs import png_bytes
from faceparse.labels import IGNORE_INDEX

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def jpeg(rng: np.random.Generator, progressive: bool = False) -> bytes:
    image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    flags = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if progressive else []
    return cv2.imencode(".jpg", image, flags)[1].tobytes()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header asks for ``width x height`` grey pixels, with almost no data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("progressive", [False, True])
def test_a_jpeg_with_data_after_its_end_is_read_and_a_cut_one_is_not(rng, tmp_path: Path,
                                                                     progressive) -> None:
    """Motion photos append a video (which may hold FF DA, FF D9 anywhere) to a complete
    JPEG: the image is read exactly; a JPEG cut inside its scans is still refused."""
    data = jpeg(rng, progressive)
    expected = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                            cv2.COLOR_BGR2RGB)
    for seed in range(20):
        trailer = np.random.default_rng(seed).integers(0, 256, 3000, dtype=np.uint8).tobytes()
        path = tmp_path / f"motion_{seed}.jpg"
        path.write_bytes(data + b"ftypmp42" + trailer[:1000] + b"\xff\xda" + trailer[1000:])
        assert np.array_equal(read_image(path), expected)
    for cut in (len(data) // 2, len(data) - 2):
        assert not jpeg_is_complete(data[:cut])
        (tmp_path / "cut.jpg").write_bytes(data[:cut])
        with pytest.raises(BadSampleError, match="truncated JPEG.*cut.jpg"):
            read_image(tmp_path / "cut.jpg")


@pytest.mark.parametrize("size", [(40000, 30000), (16000, 12000)])
def test_an_image_declaring_too_many_pixels_is_a_bad_sample_before_decoding(
        tmp_path: Path, size) -> None:
    """Over OpenCV's own cap, and under it but over Pillow's bomb limit (1.5 GiB decoded
    in each worker): both are a skippable bad sample naming the file, not a crash."""
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(*size))
    for read in (read_image, read_mask):
        with pytest.raises(BadSampleError, match="over the limit of 179 megapixels.*bomb.png"):
            read(path)


def test_a_palette_mask_reads_its_indices_as_ids(rng, tmp_path: Path) -> None:
    """VOC-style masks: the palette index is the id, whatever colour (or grey) it shows."""
    ids = rng.integers(0, 11, (20, 30), dtype=np.uint8)
    ids[0, 0] = IGNORE_INDEX
    for name, palette in (("colour", [(i * 37 % 256, i * 91 % 256, i * 13 % 256)
                                      for i in range(256)]),
                          ("grey", [(i * 20 % 256,) * 3 for i in range(256)])):
        image = Image.fromarray(ids, "P")
        image.putpalette([c for rgb in palette for c in rgb])
        image.save(tmp_path / f"{name}.png")
        assert np.array_equal(read_mask(tmp_path / f"{name}.png"), ids)


@pytest.fixture
def folder(dataset_copies, tmp_path: Path) -> Path:
    """A private copy of the image/mask folder (30 faces, FaceSynthetics ids)."""
    root = tmp_path / "folder"
    shutil.copytree(dataset_copies["folder"][0], root)
    return root


def tag_masks(root: Path, scheme: str) -> None:
    """Rewrite every mask as ``faceparse.predict`` writes one: same ids, scheme recorded."""
    for mask in (root / "masks").glob("*.png"):
        ids = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)
        mask.write_bytes(png_bytes(ids, {"faceparse:labels": scheme,
                                         "faceparse:class_names": "[]"}))


def test_masks_recording_another_scheme_are_refused_naming_both(folder: Path) -> None:
    """A mask tagged ``lapa`` read as ``facesynthetics`` would train brows as other
    classes; a folder of them is refused at once, one such sample when read."""
    tag_masks(folder, "lapa")
    with pytest.raises(ValueError, match="records label scheme 'lapa'.*read as "
                                         "'facesynthetics'.*data.dataset.scheme=lapa"):
        ImageMaskFolder("train", folder, scheme="facesynthetics")
    mask = sorted((folder / "masks").glob("*.png"))[0]
    with pytest.raises(MaskSchemeError, match=mask.name):
        read_mask(mask, "facesynthetics")
    tagged = read_mask(mask, "lapa")  # its own scheme: read as it is
    assert np.array_equal(tagged, cv2.imread(str(mask), cv2.IMREAD_UNCHANGED))
    assert len(ImageMaskFolder("train", folder, scheme="lapa")) > 0


def test_names_with_spaces_survive_a_prepared_copy(folder: Path) -> None:
    """``IMG 0001.png``: the copy's index keeps the whole name, so it is used, not
    refused as out of date, and reads the same sample."""
    for sub in ("images", "masks"):
        for path in sorted((folder / sub).glob("photo_00*.png")):
            path.rename(path.with_name(path.name.replace("photo_", "IMG ")))
    opener = lambda split, **kw: ImageMaskFolder(split, folder, scheme="facesynthetics", **kw)  # noqa: E731
    raw = opener("train")
    assert any(" " in i for i in raw.ids)
    prepare_dataset(opener, folder / "p", 32, ["train"], workers=0)
    copy = opener("train", prepared_dir=folder / "p")
    assert copy.prepared is not None and copy.ids == raw.ids


def test_a_prepared_copy_made_with_other_settings_is_refused(folder: Path) -> None:
    """Another size or another mask folder than the copy was made with: refused, naming
    both, instead of training on upsampled images or the old masks."""
    opener = lambda split: ImageMaskFolder(split, folder, scheme="facesynthetics")  # noqa: E731
    prepare_dataset(opener, folder / "p", 32, ["train"], workers=0)
    shutil.copytree(folder / "masks", folder / "masks_v2")

    def datamodule(size: int, mask_dir: str = "masks", exif: str = "auto") -> FaceDataModule:
        return FaceDataModule(lambda **kw: ImageMaskFolder(
            **kw, scheme="facesynthetics", mask_dir=mask_dir, prepared_dir=folder / "p",
            exif_orientation=exif), labels="ourface", image_size=size, root=str(folder))

    assert datamodule(32).open_dataset("train").prepared is not None
    with pytest.raises(StalePreparedError, match="holds 32 px images, not the 64 px"):
        datamodule(64).open_dataset("train")
    with pytest.raises(StalePreparedError, match="'mask_dir': 'masks'.*'mask_dir': 'masks_v2'"):
        datamodule(32, "masks_v2").open_dataset("train")
    with pytest.raises(StalePreparedError, match="'exif_orientation': 'ignore'"):
        datamodule(32, exif="ignore").open_dataset("train")  # photos turned otherwise
    turned = lambda split: ImageMaskFolder(  # noqa: E731
        split, folder, scheme="facesynthetics", exif_orientation="ignore")
    prepare_dataset(turned, folder / "q", 32, ["train"], workers=0)
    assert turned("train").recorded_settings()["exif_orientation"] == "ignore"
    assert ImageMaskFolder("train", folder, scheme="facesynthetics", prepared_dir=folder / "q",
                           exif_orientation="ignore").prepared is not None  # its own: used
    with pytest.raises(StalePreparedError, match="'exif_orientation': 'ignore'"):
        ImageMaskFolder("train", folder, scheme="facesynthetics", prepared_dir=folder / "q")


def test_a_mask_name_rule_with_another_field_is_one_clear_error(folder: Path) -> None:
    with pytest.raises(ValueError, match=r"mask_name='\{name\}_seg.png': \{stem\}"):
        ImageMaskFolder("train", folder, mask_name="{name}_seg.png")


@pytest.fixture
def lapa(dataset_copies, tmp_path: Path) -> Path:
    shutil.copytree(dataset_copies["lapa"][0], tmp_path / "LaPa")
    return tmp_path / "LaPa"


def test_a_bad_validation_sample_counts_for_nothing_not_its_neighbour_twice(lapa: Path
                                                                           ) -> None:
    """Training substitutes the next good sample (a batch must be full); a scored split
    keeps the substitute's image but ignores all its pixels."""
    for split in ("train", "val"):
        reader = LaPa(split, lapa)
        first = sorted((lapa / split / "images").glob("*.*"))[0]
        first.write_bytes(b"not an image")
        broken = reader.ids.index(first.stem)
        neighbour = reader[(broken + 1) % len(reader)]["mask"]
        stand_in = reader[broken]["mask"]
        assert np.any(neighbour != IGNORE_INDEX)
        if split == "train":
            assert np.array_equal(stand_in, neighbour)
        else:
            assert np.all(stand_in == IGNORE_INDEX)


def test_a_train_split_smaller_than_a_batch_is_refused(dataset_copies) -> None:
    """Training drops the last partial batch: a split that fills none would take no step
    and report a finished run."""
    root = dataset_copies["lapa"][0]
    module = FaceDataModule(lambda **kw: LaPa(**kw), image_size=32, batch_size=64,
                            num_workers=0, root=str(root))
    with pytest.raises(ValueError, match=r"train split has \d+ samples, fewer than one "
                                         r"batch \(data.batch_size=64\)"):
        module.setup("fit")
    module = FaceDataModule(lambda **kw: LaPa(**kw), image_size=32, batch_size=2,
                            num_workers=0, root=str(root))
    module.setup("fit")
    assert len(module.train_dataloader()) >= 1


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_stats_with_a_wrong_root_is_one_error_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "faceparse.stats", "data=lapa", f"data.root={tmp_path}/nowhere",
         f"hydra.run.dir={tmp_path}/run"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "error: LaPa train split: missing under data.root" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_eval_names_what_listing_left_out_and_refuses_when_nothing_scores(
        compose, ckpt, folder: Path, tmp_path: Path) -> None:
    """Images without a mask appear in the protocol; a split whose every sample is bad
    is an error, not a report of zeros."""
    from faceparse.eval import evaluate

    test = ImageMaskFolder("test", folder, scheme="facesynthetics").ids
    orphan = next(f"orphan_{k}" for k in range(10_000)
                  if hash_split(f"orphan_{k}", {"val": 0.05, "test": 0.05}) == "test")
    shutil.copy(folder / "images" / f"{test[0]}.png", folder / "images" / f"{orphan}.png")
    overrides = ["data=folder", f"data.root={folder}", "data.dataset.scheme=facesynthetics",
                 "data.image_size=32", "data.num_workers=0", f"ckpt={ckpt}",
                 f"out={tmp_path / 'report'}"]
    evaluate(compose(overrides, config="eval"))
    protocol = json.loads((tmp_path / "report" / "metrics.json").read_text())["protocol"]
    assert protocol["samples"] == len(test) and protocol["left_out_count"] == 1
    assert f"{orphan}.png (no mask" in protocol["left_out"][0]
    assert "1 images left out when listing" in protocol["text"]
    # eval on a CPU scores in fp32 whatever its bf16 probe reads, the frozen ViT included
    assert protocol["precision"] == "fp32"
    for sample in test:
        (folder / "masks" / f"{sample}.png").write_bytes(b"broken")
    with pytest.raises(ValueError, match=r"no sample of split=test could be scored: all "
                                         rf"{len(test)} were bad"):
        evaluate(compose(overrides + [f"out={tmp_path / 'again'}"], config="eval"))


def test_png_text_is_read_without_decoding(rng) -> None:
    from faceparse.data.io import png_text

    ids = rng.integers(0, 11, (8, 8), dtype=np.uint8)
    data = png_bytes(ids, {"faceparse:labels": "lapa", "note": "x y"})
    assert png_text(data) == {"faceparse:labels": "lapa", "note": "x y"}
    plain = io.BytesIO()
    Image.fromarray(ids).save(plain, "PNG")
    assert png_text(plain.getvalue()) == {}
