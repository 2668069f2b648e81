"""The Python predictor and its parts: reading photos, outputs (face crops:
tests/test_predict_crops.py; resizing logits: tests/test_resize.py)."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from faceparse.checkpoints import META_KEY
from faceparse.data.io import BadSampleError
from faceparse.inference import Parser, load_model
from faceparse.inference.images import read_photo, to_rgb
from faceparse.inference.listing import list_inputs, output_stems
from faceparse.inference.outputs import read_mask_scheme, write_outputs
from faceparse.labels import mapping_lut

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def photo(seed: int = 0, size: tuple[int, int] = (45, 70)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def header_only_png(path: Path, width: int, height: int) -> Path:
    """A 45-byte PNG whose header declares ``width`` x ``height`` RGB (no pixel data):
    Pillow sizes it up from the header alone, so a huge photo needs no huge file."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


# --------------------------------------------------------------------------- predictor


def test_every_input_type_gives_the_same_labels_at_the_photo_size(parser, tmp_path):
    rgb = photo()
    Image.fromarray(rgb).save(tmp_path / "p.png")
    results = [parser(rgb), parser(Image.fromarray(rgb)), parser(tmp_path / "p.png"),
               parser(torch.from_numpy(rgb).permute(2, 0, 1)),
               parser(rgb.astype(np.float32) / 255)]
    for result in results:
        assert result.labels.shape == (45, 70) and result.labels.dtype == np.uint8
        np.testing.assert_array_equal(result.labels, results[0].labels)
    assert results[0].class_names == parser.model.scheme.class_names
    assert results[0].color().shape == (45, 70, 3)


def test_labels_are_the_argmax_of_logits_resized_to_the_photo(parser):
    rgb = photo(1)
    x = parser.prepare(rgb)[0][None]
    with torch.no_grad():
        logits = parser.model.net(x)
    expected = F.interpolate(logits, size=(45, 70), mode="bilinear").argmax(1)[0].numpy()
    result = parser(rgb, probs=True)
    np.testing.assert_array_equal(result.labels, expected)
    assert result.probs.shape == (parser.model.scheme.num_classes, 45, 70)
    np.testing.assert_allclose(result.probs.astype(np.float32).sum(0), 1, atol=1e-2)


def test_predict_batch_equals_one_by_one(parser):
    images = [photo(2), photo(3, (20, 30)), photo(4, (64, 40))]
    for one, batched in zip(map(parser, images), parser.predict_batch(images), strict=True):
        np.testing.assert_array_equal(one.labels, batched.labels)


def test_image_size_comes_from_the_checkpoint_or_must_be_given(tmp_path, ckpt):
    assert load_model(ckpt, device="cpu").image_size == 32
    contents = torch.load(ckpt, weights_only=True)
    contents[META_KEY]["image_size"] = None  # as in checkpoints written before it was recorded
    torch.save(contents, bare := tmp_path / "bare.ckpt")
    with pytest.raises(ValueError, match="pass image_size="):
        Parser.from_checkpoint(bare, device="cpu")
    assert Parser.from_checkpoint(bare, device="cpu", image_size=64).image_size == 64


def test_keep_aspect_letterboxes_and_crops_the_padding_away(parser):
    keep = Parser(parser.model, keep_aspect=True)
    tensor, place = keep.prepare(photo(size=(20, 40)))
    assert (place.top, place.left, place.height, place.width) == (8, 0, 16, 32)
    assert tensor[:, :8].abs().max() < 0.02  # padding is the mean colour: zero once normalised
    assert keep(photo(size=(20, 40))).labels.shape == (20, 40)


def test_labels_option_maps_by_name(parser):
    mapped = Parser(parser.model, labels="ourface")
    rgb = photo(5)
    lut = mapping_lut(parser.model.scheme, "ourface")
    np.testing.assert_array_equal(mapped(rgb).labels, lut[parser(rgb).labels])
    assert mapped(rgb).scheme.name == "ourface"
    with pytest.raises(KeyError, match="unknown label scheme 'nope'"):
        Parser(parser.model, labels="nope")


def test_uint8_and_bad_arrays_are_handled_clearly(parser):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_rgb(np.full((4, 4, 3), 2.0, np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        to_rgb(np.zeros((4, 4, 5), np.uint8))
    assert parser(np.zeros((10, 12), np.uint8)).labels.shape == (10, 12)  # grey accepted


def test_an_empty_array_is_refused_and_one_channel_is_grey(parser):
    for empty in (np.zeros((0, 0, 3), np.uint8), np.zeros((0, 5), np.uint8),
                  torch.zeros(3, 4, 0)):
        with pytest.raises(ValueError, match=r"empty image \d+x\d+"):
            parser(empty)
    grey = photo(3, (10, 12))[..., :1]
    np.testing.assert_array_equal(parser(grey).labels, parser(grey[..., 0]).labels)
    np.testing.assert_array_equal(to_rgb(grey), np.repeat(grey, 3, axis=2))


def test_a_checkpoint_of_the_wrong_kind_is_named(tmp_path):
    torch.save({"weights": 1}, tmp_path / "odd.ckpt")
    with pytest.raises(ValueError, match="odd.ckpt is not a Lightning checkpoint"):
        load_model(tmp_path / "odd.ckpt", device="cpu")


# --------------------------------------------------------------------------- reading photos


def test_photos_of_every_kind_become_upright_rgb(tmp_path):
    rgb = photo(7, (20, 30))
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(tmp_path / "g16.png")
    assert (read_photo(tmp_path / "g16.png")[..., 1] == rgb[..., 0]).all()
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "a.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.tif")
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    frames[0].save(tmp_path / "m.gif", save_all=True, append_images=frames[1:])
    for name in ("a.png", "p.png", "c.tif", "m.gif"):
        assert read_photo(tmp_path / name).shape == (20, 30, 3), name
    np.testing.assert_array_equal(read_photo(tmp_path / "a.png"), rgb)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(rgb).save(tmp_path / "r.jpg", exif=exif, quality=95)
    assert read_photo(tmp_path / "r.jpg").shape == (30, 20, 3)


def test_unreadable_files_are_refused_naming_them(tmp_path):
    Image.fromarray(photo(size=(64, 64))).save(tmp_path / "t.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "t.jpg").read_bytes()[:300])
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "dir.jpg").mkdir()
    os.symlink(tmp_path / "gone.jpg", tmp_path / "link.jpg")
    for name in ("cut.jpg", "text.jpg", "empty.png", "dir.jpg", "link.jpg"):
        with pytest.raises(BadSampleError, match=name):
            read_photo(tmp_path / name)


def test_a_photo_over_pillows_decode_limit_is_a_bad_sample_and_the_limit_stays(tmp_path):
    limit = Image.MAX_IMAGE_PIXELS
    header_only_png(tmp_path / "bomb.png", 14000, 14000)
    mp = f"{2 * limit / 1e6:.0f}"
    with pytest.raises(BadSampleError,
                       match=f"bomb.png: 196 MP, over Pillow's decode limit of {mp} MP"):
        read_photo(tmp_path / "bomb.png")
    assert limit == Image.MAX_IMAGE_PIXELS  # refused, not let through by raising the limit


def test_inputs_get_distinct_outputs_and_the_output_folder_is_not_read(tmp_path):
    for rel in ("a.jpg", "a.png", "sub/a.jpg", "out/a_mask.png", "notes.txt"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    files, root = list_inputs(tmp_path, tmp_path / "out")
    assert sorted(f.relative_to(tmp_path).as_posix() for f in files) == [
        "a.jpg", "a.png", "sub/a.jpg"]
    stems = output_stems(files, root)
    assert sorted(s.as_posix() for s in stems) == ["a_jpg", "a_png", "sub/a"]
    globbed, groot = list_inputs(str(tmp_path / "*.jpg"))
    assert globbed == [tmp_path / "a.jpg"] and output_stems(globbed, groot) == [Path("a")]
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        list_inputs(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images or videos"):
        list_inputs(tmp_path / "empty")


def test_mask_png_names_its_scheme_and_classes(parser, tmp_path):
    rgb = photo(8)
    result = parser(rgb, probs=True)
    write_outputs(tmp_path, Path("x"), rgb, result, True, 0.5, parser.model.scheme)
    mask = np.asarray(Image.open(tmp_path / "x_mask.png"))
    np.testing.assert_array_equal(mask, result.labels)
    name, classes = read_mask_scheme(tmp_path / "x_mask.png")
    assert name == result.scheme.name and tuple(classes) == result.class_names
    vis = np.asarray(Image.open(tmp_path / "x_visualization.png"))
    assert vis.shape[0] == 45 and vis.shape[1] > 2 * 70
    saved = np.load(tmp_path / "x_probs.npz")
    probs = saved["probs"]
    assert probs.dtype == np.float16 and probs.shape == result.probs.shape
    np.testing.assert_array_equal(probs, result.probs.astype(np.float16))  # channel order too
    assert tuple(saved["class_names"]) == parser.model.scheme.class_names


def test_written_pngs_decode_to_the_reference_images(parser, tmp_path):
    """The fast encoders change bytes, never pixels: every PNG decodes (with Pillow, as
    users read them) to the colours, overlay and visualization computed the plain way."""
    import cv2

    from faceparse.inference.outputs import _legend

    rgb = photo(9, (61, 83))
    result = parser(rgb)
    result.labels[:5] = np.arange(83) % result.scheme.num_classes  # many classes present
    write_outputs(tmp_path, Path("y"), rgb, result, True, 0.4, parser.model.scheme)
    color = result.scheme.palette_array()[result.labels]
    blended = cv2.addWeighted(color, 0.4, rgb, 0.6, 0)
    legend = _legend(result.labels, result.scheme, 61)
    assert legend.shape[0] == 14 * len(np.unique(result.labels)) > 61  # every class named
    expected = {"mask": result.labels, "color": color, "overlay": blended,
                "visualization": np.concatenate(
                    [np.pad(rgb, ((0, legend.shape[0] - 61), (0, 0), (0, 0)),
                            constant_values=255),
                     np.pad(blended, ((0, legend.shape[0] - 61), (0, 0), (0, 0)),
                            constant_values=255), legend], axis=1)}
    for kind, want in expected.items():
        with Image.open(tmp_path / f"y_{kind}.png") as image:
            assert image.mode == ("L" if kind == "mask" else "RGB")
            np.testing.assert_array_equal(np.asarray(image), want, err_msg=kind)
    assert read_mask_scheme(tmp_path / "y_mask.png")[0] == result.scheme.name


def test_png_text_chunks_are_valid_and_any_text_is_kept(tmp_path):
    """Latin-1 text is spliced into OpenCV's PNG (checksums verified by Pillow); other
    text (and 16-bit arrays) go through Pillow, so nothing is dropped."""
    from faceparse.inference.outputs import png_bytes

    labels = np.arange(60, dtype=np.uint8).reshape(6, 10) % 7
    for text in ({"faceparse:labels": "ourface", "note": "Ünïcode-free"}, {"note": "✓ 面"}):
        (tmp_path / "t.png").write_bytes(png_bytes(labels, text))
        with Image.open(tmp_path / "t.png") as image:
            image.verify()
        with Image.open(tmp_path / "t.png") as image:
            assert image.text == text
            np.testing.assert_array_equal(np.asarray(image), labels)
    deep = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000
    with Image.open(io.BytesIO(png_bytes(deep))) as image:
        np.testing.assert_array_equal(np.asarray(image), deep)


# --------------------------------------------------------------------------- bench section


@pytest.mark.parametrize("overlay", [True, False])
def test_bench_predict_section_measures_a_folder_end_to_end(compose, ckpt, tmp_path, overlay):
    from faceparse.bench.report import format_table
    from faceparse.bench.variants import run

    # with the overlay: a given checkpoint (run at its recorded size, 32 px) instead of
    # model.net (at data.image_size, 48 px) with random weights
    weights = [f"bench.predict.ckpt={ckpt}"] if overlay else []
    cfg = compose(["cnn.arch=vgg11_bn", "vit.size=small", "decoder.decoder_channels=32",
                   "data.image_size=48", "bench.sections=[predict]", "bench.predict.images=3",
                   "bench.predict.photo_size=64", "bench.predict.workers=0", "bench.device=cpu",
                   "bench.predict.repeats=2",
                   f"bench.predict.save_overlay={overlay}", *weights],
                  config="bench", output_dir=tmp_path)
    result = run(cfg)["predict"]
    assert (result["images"], result["failed"]) == (3, 0)
    assert (result["image_size"], result["weights"]) == ((32, str(ckpt)) if overlay else
                                                         (48, "random"))
    assert 0 <= result["boundary_share"] < 1 and result["classes_per_photo"] >= 1
    assert result["end_to_end_images_per_s"] > 0 and result["model_images_per_s"] > 0
    assert 0 < result["model_share"] < 1  # the model passes' share of each run
    assert result["end_to_end_over_model"] == pytest.approx(
        result["end_to_end_images_per_s"] / result["model_images_per_s"])
    assert result["repeats"] == len(result["end_to_end_over_model_per_repeat"]) == 2
    # the result says what was written per photo
    assert result["save_overlay"] is overlay
    assert result["written_per_photo"] == ["mask.png", "color.png"] + (
        ["overlay.png", "visualization.png"] if overlay else [])
    table = format_table({"predict": result})
    assert "predict end to end" in table
    assert ("mask+color+overlay+visualization" if overlay else "writes mask+color,") in table


def test_boundary_share_counts_pixels_with_another_label_right_or_below():
    from faceparse.bench.predict_section import boundary_share

    labels = np.zeros((4, 4), np.uint8)
    labels[:, 2:] = 1  # a vertical edge: column 1 differs from its right neighbour
    assert boundary_share(labels) == 4 / 16
    assert boundary_share(np.zeros((3, 5), np.uint8)) == 0


def test_writer_threads_follow_the_model_on_a_cpu_and_the_free_cores_beside_a_gpu(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from faceparse.inference.folder import writer_threads

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert writer_threads(torch.device("cpu"), loader_workers=2) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert writer_threads(torch.device("cuda"), loader_workers=8) == 8
    assert writer_threads(torch.device("cuda"), loader_workers=15) == 2  # never fewer than two
