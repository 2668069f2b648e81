"""Rerunning ``faceparse.predict`` into an ``output_dir`` that holds outputs: it skips
only what this photo, checkpoint, scheme and settings made (the mask records them)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from predict_helpers import predict_config, write_image, write_video

from faceparse.data.io import SCHEME_TEXT_KEY, read_png_text
from faceparse.inference.outputs import png_bytes, read_mask_scheme
from faceparse.inference.provenance import RECORD_KEY
from faceparse.predict import predict

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _size(mask: Path) -> tuple[int, int]:
    with Image.open(mask) as image:
        return image.size


def _made_from(mask: Path) -> dict:
    return json.loads(read_png_text(mask)[RECORD_KEY])


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_a_photo_with_the_same_name_from_another_folder_does_not_take_the_first_ones_mask(
        compose, ckpt, tmp_path, caplog):
    write_image(tmp_path / "trip1" / "IMG_0001.jpg", (40, 30))
    write_image(tmp_path / "trip2" / "IMG_0001.jpg", (60, 90), 1)
    out, mask = tmp_path / "shared", tmp_path / "shared" / "IMG_0001_mask.png"
    first = predict(predict_config(compose, tmp_path, ckpt, f"input={tmp_path / 'trip1'}",
                                   f"output_dir={out}"))
    assert first["images"] == 1
    made = _made_from(mask)
    assert made["source"] == "IMG_0001.jpg" and made["size"] == [30, 40]
    assert made["source_file"]["path"] == str(tmp_path / "trip1" / "IMG_0001.jpg")
    assert made["model"]["path"] == str(ckpt)
    with caplog.at_level(logging.WARNING):
        second = predict(predict_config(compose, tmp_path, ckpt, f"input={tmp_path / 'trip2'}",
                                        f"output_dir={out}"))
    # refused, counted as failed (not "skipped"), and trip1's mask is not overwritten
    assert (second["images"], second["failed"], second["skipped"]) == (0, 1, 0)
    assert f"made from {tmp_path / 'trip1' / 'IMG_0001.jpg'}, another photo" in caplog.text
    assert "trip2/IMG_0001.jpg" in caplog.text and _size(mask) == (30, 40)
    again = predict(predict_config(compose, tmp_path, ckpt, f"input={tmp_path / 'trip1'}",
                                   f"output_dir={out}"))
    assert (again["images"], again["skipped"], again["redone"]) == (0, 1, 0)
    # a single file given after another one with its stem: the same refusal
    write_image(tmp_path / "single" / "a.png", (20, 24))
    write_image(tmp_path / "single" / "a.jpg", (28, 16), 2)
    for name, failed in (("a.png", 0), ("a.jpg", 1)):
        done = predict(predict_config(compose, tmp_path, ckpt,
                                      f"input={tmp_path / 'single' / name}",
                                      f"output_dir={tmp_path / 'one'}"))
        assert done["failed"] == failed
    assert _size(tmp_path / "one" / "a_mask.png") == (24, 20)


def one_photo_reruns(compose, tmp_path: Path, caplog):
    """``in/p.png``'s mask path, and a run over it into ``out/`` (checkpoint, options) that
    returns predict's summary with this run's warnings alone in ``caplog``."""
    photos, out = tmp_path / "in", tmp_path / "out"
    write_image(photos / "p.png", (30, 20))

    def run(ckpt, *extra: str) -> dict:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            return predict(predict_config(compose, tmp_path, ckpt, f"input={photos}",
                                          f"output_dir={out}", *extra))

    return out / "p_mask.png", run


@pytest.mark.slow  # a whole command, end to end: in CI's slow suite
def test_a_rerun_redoes_outputs_of_another_checkpoint_scheme_or_setting_or_a_changed_photo(
        compose, ckpt, tmp_path, caplog):
    mask, rerun = one_photo_reruns(compose, tmp_path, caplog)
    photos = tmp_path / "in"

    def run(*extra: str) -> dict:  # the checkpoint first
        return rerun(extra[0] if extra else ckpt, *extra[1:])

    assert run()["images"] == 1
    assert run()["skipped"] == 1 and "again" not in caplog.text
    # the same mask as if written with labels=celebamask (the tiny model's scheme is ourface)
    text = dict(read_png_text(mask), **{SCHEME_TEXT_KEY: "celebamask"})
    mask.write_bytes(png_bytes(np.asarray(Image.open(mask)), text))
    other_scheme = run()
    assert (other_scheme["images"], other_scheme["redone"]) == (1, 1)
    assert f"parsing {photos / 'p.png'} again: its outputs {mask} are stale: in labels " \
           f"'celebamask', not 'ourface'" in caplog.text
    assert read_mask_scheme(mask)[0] == "ourface"
    moved = tmp_path / "elsewhere" / "model.ckpt"
    moved.parent.mkdir()
    os.link(ckpt, moved)
    other_model = run(str(moved))
    assert other_model["redone"] == 1 and f"not {moved}" in caplog.text
    other_size = run(str(moved), "keep_aspect=true")
    assert other_size["redone"] == 1 and "keep_aspect=False, not True" in caplog.text
    write_image(photos / "p.png", (36, 24), 5)  # the photo replaced in place
    changed = run(str(moved), "keep_aspect=true")
    assert changed["redone"] == 1 and "the photo changed" in caplog.text
    assert _size(mask) == (24, 36)
    assert run(str(moved), "keep_aspect=true", "overwrite=true")["images"] == 1


def test_another_overlay_alpha_or_precision_is_redone_and_older_records_are_kept(
        compose, ckpt, tmp_path, caplog):
    """Overlays blended at another alpha, labels computed in bf16 against fp32: not the
    outputs asked for. Masks from before precision was recorded are not all redone."""
    mask, rerun = one_photo_reruns(compose, tmp_path, caplog)

    def run(*extra: str) -> dict:
        return rerun(ckpt, *extra)

    assert run("save_overlay=true", "alpha=0.2", "precision=32-true")["images"] == 1
    assert run("save_overlay=true", "alpha=0.2", "precision=32-true")["skipped"] == 1
    assert run("save_overlay=true", "alpha=0.9", "precision=32-true")["redone"] == 1
    assert "alpha=0.2, not 0.9" in caplog.text
    assert run("save_overlay=false", "precision=32-true")["skipped"] == 1  # no overlay asked
    assert run("save_overlay=false", "precision=bf16-mixed")["redone"] == 1
    assert "precision='32-true', not 'bf16-mixed'" in caplog.text
    made_from = json.loads(read_png_text(mask)[RECORD_KEY])
    del made_from["settings"]["precision"]  # a mask from before precision was recorded
    text = dict(read_png_text(mask), **{RECORD_KEY: json.dumps(made_from)})
    mask.write_bytes(png_bytes(np.asarray(Image.open(mask)), text))
    assert run("save_overlay=false", "precision=32-true")["skipped"] == 1


def test_a_photo_parsed_again_without_a_face_keeps_none_of_its_earlier_outputs(
        compose, ckpt, tmp_path, caplog):
    """crop=none wrote its files; crop=faces finds no face in it: the earlier files do not
    stand as its result (a photo without a face gets none)."""
    photos, out = tmp_path / "in", tmp_path / "out"
    write_image(photos / "p.png", (40, 40))  # noise: the detector finds no face
    first = predict(predict_config(compose, tmp_path, ckpt, f"input={photos}",
                                   f"output_dir={out}", "save_overlay=true"))
    assert first["images"] == 1 and (out / "p_overlay.png").is_file()
    with caplog.at_level(logging.WARNING):
        again = predict(predict_config(compose, tmp_path, ckpt, f"input={photos}",
                                       f"output_dir={out}", "crop=faces"))
    assert (again["images"], again["without_face"], again["redone"]) == (0, 1, 0)
    assert list(out.iterdir()) == []
    assert f"removed p_mask.png, p_color.png, p_overlay.png, p_visualization.png: the " \
           f"earlier outputs of {photos / 'p.png'}" in caplog.text


def test_a_stale_photo_that_cannot_be_read_now_counts_as_failed_not_redone(
        compose, ckpt, tmp_path):
    photos, out = tmp_path / "in", tmp_path / "out"
    write_image(photos / "p.png", (30, 20))
    write_image(photos / "q.png", (30, 20), 1)
    assert predict(predict_config(compose, tmp_path, ckpt, f"input={photos}",
                                  f"output_dir={out}"))["images"] == 2
    (photos / "p.png").write_bytes(b"not a picture any more")
    write_image(photos / "q.png", (30, 20), 2)  # changed, readable: parsed again
    again = predict(predict_config(compose, tmp_path, ckpt, f"input={photos}",
                                   f"output_dir={out}"))
    assert (again["images"], again["failed"], again["redone"]) == (1, 1, 1)


def test_outputs_written_before_the_record_are_kept_only_when_nothing_tells_them_apart(
        compose, ckpt, tmp_path, caplog):
    photos, out = tmp_path / "in", tmp_path / "out"
    write_image(photos / "fits.png", (30, 20))
    write_image(photos / "sized.png", (30, 20), 1)
    assert predict(predict_config(compose, tmp_path, ckpt, f"input={photos}",
                                  f"output_dir={out}"))["images"] == 2
    # what an earlier version wrote: the scheme, no record; one of another photo's size
    old = {SCHEME_TEXT_KEY: "ourface", "faceparse:class_names": "[]"}
    (out / "fits_mask.png").write_bytes(png_bytes(np.zeros((30, 20), np.uint8), old))
    (out / "sized_mask.png").write_bytes(png_bytes(np.zeros((40, 50), np.uint8), old))
    with caplog.at_level(logging.WARNING):
        rerun = predict(predict_config(compose, tmp_path, ckpt, f"input={photos}",
                                       f"output_dir={out}"))
    assert (rerun["skipped"], rerun["redone"]) == (1, 1)
    assert "sized.png again" in caplog.text and "it is 50x40 px, the photo 20x30 px" in caplog.text
    assert "kept the outputs of 1 inputs written before masks recorded their source" in (
        caplog.text)
    assert RECORD_KEY not in read_png_text(out / "fits_mask.png")
    assert _made_from(out / "sized_mask.png")["source"] == "sized.png"


def test_adding_a_twin_leaves_the_old_mask_recording_its_own_photo_and_says_so(
        compose, ckpt, tmp_path, caplog):
    photos, out = tmp_path / "in", tmp_path / "out"
    write_image(photos / "a.jpg", (40, 30))
    cfg = (f"input={photos}", f"output_dir={out}")
    assert predict(predict_config(compose, tmp_path, ckpt, *cfg))["images"] == 1
    write_image(photos / "a.png", (70, 50), 1)
    with caplog.at_level(logging.WARNING):
        done = predict(predict_config(compose, tmp_path, ckpt, *cfg))
    assert (done["images"], done["failed"]) == (2, 0)
    assert f"left behind: {out / 'a_mask.png'} is {photos / 'a.jpg'}'s mask" in caplog.text
    assert _made_from(out / "a_mask.png")["source"] == "a.jpg"  # not taken for a.png's
    assert _made_from(out / "a_png_mask.png")["source"] == "a.png"
    assert _size(out / "a_png_mask.png") == (50, 70)


def test_video_frame_masks_record_their_scheme_and_a_skipped_video_is_counted(
        compose, ckpt, tmp_path):
    write_image(tmp_path / "in" / "p.png", (20, 20))
    write_video(tmp_path / "in" / "clip.mp4")
    out = tmp_path / "out"
    cfg = (f"input={tmp_path / 'in'}", f"output_dir={out}", "labels=ourface")
    assert predict(predict_config(compose, tmp_path, ckpt, *cfg))["images"] == 5
    frame = out / "clip_frames" / "000000_mask.png"
    assert read_mask_scheme(frame) == read_mask_scheme(out / "p_mask.png")
    assert read_mask_scheme(frame)[0] == "ourface"
    assert _made_from(frame)["source"] == "clip.mp4"
    again = predict(predict_config(compose, tmp_path, ckpt, *cfg))
    assert (again["images"], again["skipped"], again["inputs"]) == (0, 2, 2)
    other = predict(predict_config(compose, tmp_path, ckpt, *cfg, "keep_aspect=true"))
    assert (other["images"], other["redone"]) == (5, 2)
    assert _made_from(frame)["settings"]["keep_aspect"] is True


def test_a_video_without_frame_masks_records_what_made_it_and_is_redone_when_stale(
        compose, ckpt, tmp_path, caplog):
    write_video(tmp_path / "in" / "clip.mp4")
    out = tmp_path / "out"
    cfg = (f"input={tmp_path / 'in'}", f"output_dir={out}", "save_frames=false",
           "labels=ourface")
    assert predict(predict_config(compose, tmp_path, ckpt, *cfg))["images"] == 4
    assert not (out / "clip_frames").exists()
    text = json.loads((out / "clip_video.json").read_text())
    made_from = json.loads(text[RECORD_KEY])
    assert (made_from["source"], made_from["size"]) == ("clip.mp4", [48, 32])
    assert made_from["settings"]["smoothing"] == 0.0
    assert text[SCHEME_TEXT_KEY] == "ourface"
    again = predict(predict_config(compose, tmp_path, ckpt, *cfg))
    assert (again["images"], again["skipped"], again["redone"]) == (0, 1, 0)
    with caplog.at_level(logging.WARNING):  # smoothing changes the labels: not the same run
        smoother = predict(predict_config(compose, tmp_path, ckpt, *cfg, "smoothing=0.5"))
    assert (smoother["images"], smoother["redone"]) == (4, 1)
    assert "smoothing=0.0, not 0.5" in caplog.text
    assert json.loads(json.loads((out / "clip_video.json").read_text())[RECORD_KEY])[
        "settings"]["smoothing"] == 0.5
    (out / "clip_video.json").write_text("{broken")
    with caplog.at_level(logging.WARNING):
        broken = predict(predict_config(compose, tmp_path, ckpt, *cfg, "smoothing=0.5"))
    assert (broken["images"], broken["redone"]) == (4, 1)
    assert "clip_video.json is not readable" in caplog.text


def test_another_video_with_the_same_output_name_is_not_overwritten_without_frames(
        compose, ckpt, tmp_path):
    write_video(tmp_path / "a" / "clip.mp4")
    write_video(tmp_path / "b" / "clip.mp4", frames=3)
    out = tmp_path / "out"
    first = predict(predict_config(compose, tmp_path, ckpt, f"input={tmp_path / 'a'}",
                                   f"output_dir={out}", "save_frames=false"))
    assert first["images"] == 4
    before = (out / "clip_overlay.mp4").read_bytes()
    second = predict(predict_config(compose, tmp_path, ckpt, f"input={tmp_path / 'b'}",
                                    f"output_dir={out}", "save_frames=false"))
    assert (second["images"], second["failed"]) == (0, 1)
    assert (out / "clip_overlay.mp4").read_bytes() == before


def test_video_outputs_from_before_the_record_are_kept_with_a_warning(
        compose, ckpt, tmp_path, caplog):
    write_video(tmp_path / "in" / "clip.mp4")
    out = tmp_path / "out"
    cfg = (f"input={tmp_path / 'in'}", f"output_dir={out}", "save_frames=false")
    assert predict(predict_config(compose, tmp_path, ckpt, *cfg))["images"] == 4
    (out / "clip_video.json").unlink()  # as an older version left them
    with caplog.at_level(logging.WARNING):
        again = predict(predict_config(compose, tmp_path, ckpt, *cfg))
    assert (again["images"], again["skipped"]) == (0, 1)
    assert "written before videos recorded their source" in caplog.text
