"""What ``faceparse.predict`` takes from ``input=``: symlinked folders, an output_dir at or
above the input, files it cannot read, boxes per photo; nothing dropped without a word."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from predict_helpers import predict_config, write_image

from faceparse.data.io import BadSampleError
from faceparse.inference.images import read_photo
from faceparse.inference.listing import list_inputs
from faceparse.predict import _boxes_for, predict

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _names(files: list[Path], root: Path) -> list[str]:
    return sorted(f.relative_to(root).as_posix() for f in files)


def test_symlinked_subfolders_are_searched_once_and_a_loop_is_named(tmp_path, caplog):
    write_image(tmp_path / "shared_album" / "x.png", (10, 10))
    write_image(tmp_path / "in" / "y.png", (10, 10))
    os.symlink("../shared_album", tmp_path / "in" / "album")
    os.symlink("..", tmp_path / "in" / "loop")  # back up the tree: must not recurse
    with caplog.at_level(logging.WARNING):
        files, root = list_inputs(tmp_path / "in")
    assert _names(files, tmp_path / "in") == ["album/x.png", "y.png"]
    assert f"not searched: {tmp_path / 'in' / 'loop'}" in caplog.text


def test_an_output_dir_at_or_above_the_input_leaves_out_only_its_outputs(
        compose, ckpt, tmp_path, caplog):
    photos = tmp_path / "photos"
    write_image(photos / "p.png", (20, 16))
    write_image(photos / "sub" / "beach_colour.png", (20, 16), 1)
    inside = photos / "masks"  # strictly inside: everything under it is an output
    write_image(inside / "q.png", (4, 4))
    assert _names(list_inputs(photos, inside)[0], photos) == ["p.png", "sub/beach_colour.png"]
    (inside / "q.png").unlink()
    inside.rmdir()
    for out in (photos, tmp_path):  # masks beside the photos; into the folder above
        done = predict(predict_config(compose, tmp_path, ckpt, f"input={photos}",
                                      f"output_dir={out}"))
        assert (done["images"], done["inputs"]) == (2, 2)
    again = predict(predict_config(compose, tmp_path, ckpt, f"input={photos}",
                                   f"output_dir={photos}"))
    assert (again["inputs"], again["skipped"]) == (2, 2)  # its masks are not read back
    only = tmp_path / "only_outputs"
    for name in ("p_mask.png", "p_color.png"):
        write_image(only / name, (4, 4))
    with pytest.raises(FileNotFoundError, match=r"all 2 files there are left out as this "
                                                r"command's own outputs \(named like"):
        list_inputs(only, only)


def test_files_no_reader_takes_are_counted_and_readable_suffixes_are_listed(tmp_path, caplog):
    folder = tmp_path / "in"
    write_image(folder / "a.jpg", (10, 10))
    folder.joinpath("b.jfif").write_bytes((folder / "a.jpg").read_bytes())
    for name in ("c.heic", "notes.txt", ".DS_Store"):
        folder.joinpath(name).write_bytes(b"x")
    folder.joinpath("clip.m4v").write_bytes(b"x")
    with caplog.at_level(logging.WARNING):
        files, _ = list_inputs(folder)
    assert _names(files, folder) == ["a.jpg", "b.jfif", "clip.m4v"]
    assert (f"2 files with other suffixes not read (no reader here takes them), e.g. "
            f"{folder / 'c.heic'}, {folder / 'notes.txt'}") in caplog.text
    assert read_photo(folder / "b.jfif").shape == (10, 10, 3)


def test_32_bit_float_and_integer_tiffs_are_refused_not_parsed_black(tmp_path):
    ramp = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    Image.fromarray(ramp).save(tmp_path / "f.tif")
    Image.fromarray((ramp * 2**20).astype(np.int32)).save(tmp_path / "i.tif")
    for name, kind in (("f.tif", "floating-point"), ("i.tif", "integer")):
        with pytest.raises(BadSampleError, match=f"32-bit {kind} samples .*{name}"):
            read_photo(tmp_path / name)
    # 32-bit samples whose values fit in 16 bits: the file's bit depth, not the values, says
    Image.fromarray(np.full((8, 8), 200, np.uint32)).save(tmp_path / "u32.tif")
    Image.fromarray(np.full((8, 8), 4095, np.int32)).save(tmp_path / "i12.tif")
    for name in ("u32.tif", "i12.tif"):
        with pytest.raises(BadSampleError, match=f"32-bit integer samples .*{name}"):
            read_photo(tmp_path / name)
    Image.fromarray(np.full((3, 4), 60000, np.uint16)).save(tmp_path / "g16.tif")
    assert (read_photo(tmp_path / "g16.tif") == 60000 >> 8).all()  # 16 bits still scale


def _malformed_exif_jpeg(path, height: int, width: int) -> None:
    """A phone-like JPEG turned 90° by its EXIF orientation (6), one of whose tags is
    malformed: WhitePoint, a RATIONAL tag, typed as text. Pillow opens it, but rewriting
    the EXIF (``ImageOps.exif_transpose``) raises ``TypeError``."""
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "Cam"
    raw = exif.tobytes().replace(b"\x01\x0f\x00\x02", b"\x01\x3e\x00\x02")
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[0, 0] = 255  # the stored top-left corner: top-right once turned upright
    Image.fromarray(rgb).save(path, exif=raw, quality=100)


def test_a_malformed_exif_photo_is_read_upright(tmp_path):
    _malformed_exif_jpeg(tmp_path / "phone.jpg", 24, 32)
    photo = read_photo(tmp_path / "phone.jpg")
    assert photo.shape == (32, 24, 3)  # turned as orientation 6 says
    assert photo[0, -1].min() > 200 and photo[-1, 0].max() < 50


def test_an_empty_batch_is_an_empty_list(parser):
    assert parser.predict_batch([]) == []


def test_boxes_are_looked_up_by_path_under_input_and_a_shared_name_is_not_guessed(
        tmp_path, caplog):
    for rel in ("a.png", "sub/a.png", "sub/b.png", "c/d.png"):
        write_image(tmp_path / rel, (10, 10))
    files = [tmp_path / rel for rel in ("a.png", "sub/a.png", "sub/b.png", "c/d.png")]
    (tmp_path / "boxes.json").write_text(
        '{"a.png": [[0, 0, 5, 5]], "sub/a.png": [[5, 5, 10, 10]], "b.png": [[1, 1, 9, 9]]}')
    cfg = SimpleNamespace(crop="box", boxes=str(tmp_path / "boxes.json"))
    assert _boxes_for(cfg, files, tmp_path) == [
        [(0, 0, 5, 5)], [(5, 5, 10, 10)], [(1, 1, 9, 9)], None]  # b.png: a unique name
    (tmp_path / "boxes.json").write_text('{"a.png": [[0, 0, 5, 5]]}')
    with caplog.at_level(logging.WARNING):
        found = _boxes_for(cfg, files[1:], tmp_path)  # only sub/a.png has that name now
        assert found[0] == [(0, 0, 5, 5)] and "fits" not in caplog.text
        found = _boxes_for(cfg, [files[1], tmp_path / "x" / "a.png"], tmp_path)
    assert found == [None, None]
    assert 'key "a.png" fits 2 inputs, so it is not used for sub/a.png, x/a.png' in caplog.text


def test_crop_box_run_parses_a_nested_photo_in_its_own_box(compose, ckpt, tmp_path, caplog):
    write_image(tmp_path / "in" / "a.png", (40, 40))
    write_image(tmp_path / "in" / "sub" / "a.png", (40, 40), 1)
    (tmp_path / "boxes.json").write_text('{"sub/a.png": [[20, 20, 40, 40]]}')
    with caplog.at_level(logging.WARNING):
        done = predict(predict_config(compose, tmp_path, ckpt, f"input={tmp_path / 'in'}",
                                      f"output_dir={tmp_path / 'out'}", "crop=box", "margin=0",
                                      f"boxes={tmp_path / 'boxes.json'}"))
    assert (done["images"], done["without_face"]) == (1, 1)
    assert f'no mask: {tmp_path / "in" / "a.png"}: no box for it' in caplog.text
    assert '(key "a.png")' in caplog.text
    mask = np.asarray(Image.open(tmp_path / "out" / "sub" / "a_mask.png"))
    assert (mask[:20] == 0).all() and (mask[:, :20] == 0).all()
