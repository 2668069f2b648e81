"""``python -m faceparse.predict``: what it writes, what it skips, how it refuses."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from predict_helpers import predict_config, run_predict, write_image, write_video
from test_predict import header_only_png

import faceparse.predict as predict_command
from faceparse.inference.outputs import read_mask_scheme
from faceparse.predict import predict

pytestmark = pytest.mark.usefixtures("torch_single_thread")
# the folder command reports an unusable box itself (naming the file, counting it): the
# Parser's UnusableBoxWarning for the same box would say it twice
ONCE = pytest.mark.filterwarnings("error::faceparse.inference.predictor.UnusableBoxWarning")


@pytest.mark.slow
def test_a_folder_run_writes_every_output_and_resumes(compose, ckpt, tmp_path):
    photos = tmp_path / "photos"
    write_image(photos / "a.jpg", (40, 60))
    write_image(photos / "a.png", (30, 50), 1)
    write_image(photos / "sub" / "a.jpg", (20, 30), 2)
    (photos / "bad.jpg").write_text("not an image")
    os.symlink(photos / "gone.jpg", photos / "broken.jpg")
    write_video(photos / "clip.mp4")
    out = photos / "masks"  # inside the input folder: must not be read back
    done = run_predict(f"ckpt={ckpt}", f"input={photos}", f"output_dir={out}",
                       "labels=ourface", "save_probs=true", "save_overlay=true", "smoothing=0.7",
                       f"hydra.run.dir={tmp_path / 'run'}")
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    for stem, size in (("a_jpg", (40, 60)), ("a_png", (30, 50)), ("sub/a", (20, 30))):
        mask = np.asarray(Image.open(out / f"{stem}_mask.png"))
        assert mask.shape == size and mask.max() < 11
        assert read_mask_scheme(out / f"{stem}_mask.png")[0] == "ourface"
        for kind in ("color.png", "overlay.png", "visualization.png", "probs.npz"):
            assert (out / f"{stem}_{kind}").is_file(), kind
    assert "bad.jpg" in log and "broken.jpg" in log
    assert "7 images, 2 failed, 0 skipped" in log  # 3 photos + 4 video frames
    assert re.search(r"s, model \d+% of it, [\d.]+ images/s", log)
    assert (out / "clip_overlay.mp4").stat().st_size > 0
    assert len(list((out / "clip_frames").glob("*_mask.png"))) == 4
    assert "flicker" in log
    assert "CPU memory:" in log  # the allocator choice is logged with its reason
    again = predict(predict_config(compose, tmp_path, ckpt, f"input={photos}", f"output_dir={out}",
                                   "labels=ourface", "save_probs=true", "smoothing=0.7"))
    assert (again["images"], again["failed"], again["skipped"]) == (0, 2, 4)  # 3 photos, 1 video


@pytest.mark.slow  # a whole command, end to end: in CI's slow suite
def test_fast_path_options_reach_the_model_and_bad_ones_are_one_line(ckpt, tmp_path):
    write_image(tmp_path / "in" / "a.png", (24, 20))
    done = run_predict(f"ckpt={ckpt}", f"input={tmp_path / 'in'}",
                       f"output_dir={tmp_path / 'out'}", "fast_path.reuse_cpu_memory=false",
                       "fast_path.fold_batchnorm=false", f"hydra.run.dir={tmp_path / 'run'}")
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert np.asarray(Image.open(tmp_path / "out" / "a_mask.png")).shape == (24, 20)
    assert "CPU memory:" not in log  # reuse switched off: the allocator is left alone
    bad = run_predict(f"ckpt={ckpt}", f"input={tmp_path / 'in'}", "fast_path.compile_mode=fast",
                      f"output_dir={tmp_path / 'out2'}", f"hydra.run.dir={tmp_path / 'run2'}")
    assert bad.returncode == 2
    assert "fast_path.compile_mode='fast': use one of" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_exit_code_is_nonzero_only_when_every_input_failed(ckpt, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.png").write_bytes(b"")
    done = run_predict(f"ckpt={ckpt}", f"input={tmp_path / 'in'}",
                       f"output_dir={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 1 and "x.png" in done.stdout + done.stderr
    missing = run_predict(f"ckpt={ckpt}", f"input={tmp_path / 'nope'}",
                          f"hydra.run.dir={tmp_path / 'run2'}")
    assert missing.returncode == 2
    assert "input=" in missing.stdout + missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.parametrize(("overrides", "error", "message"), [
    (("input=@nope",), FileNotFoundError, "input=.*no such file"),
    (("input=@empty",), FileNotFoundError, "no images or videos"),
    (("input=@photo.png", "labels=klingon"), KeyError, "unknown label scheme 'klingon'"),
    (("input=@photo.png", "crop=box"), ValueError, "crop=box needs boxes"),
    (("input=@photo.png", "batch_size=0"), ValueError, "batch_size=0: use a whole number"),
    (("input=@photo.png", "device=gpu"), ValueError, "device=gpu: not a device; use auto"),
    (("input=@photo.png", "smoothing=1.0"), ValueError, r"smoothing=1.0: give a number in \["),
    (("input=@photo.png", "smoothing=lots"), ValueError, "smoothing='lots': give a number"),
    # Hydra passes no/off as text, and bool("no") is True: each is refused, never read as on
    (("input=@photo.png", "trust_pickle=no"), ValueError, "trust_pickle=no: use true or false"),
    (("input=@photo.png", "keep_aspect=no"), ValueError, "keep_aspect=no: use true or false"),
    (("input=@photo.png", "overwrite=off"), ValueError, "overwrite=off: use true or false"),
    (("input=@photo.png", "save_overlay=no"), ValueError, "save_overlay=no: use true or"),
    (("input=@photo.png", "save_frames=0"), ValueError, "save_frames=0: use true or false"),
    (("input=@photo.png", "image_size=abc"), ValueError, "image_size=abc: the model input"),
    (("input=@photo.png", "margin=-0.6"), ValueError, "margin=-0.6: the share of a face box"),
    (("input=@photo.png", "margin=abc"), ValueError, "margin=abc: the share of a face box"),
    (("input=@photo.png", "alpha=abc"), ValueError, "alpha=abc: the colour weight"),
    (("input=@photo.png", "alpha=1.5"), ValueError, "alpha=1.5: the colour weight .* between"),
    (("input=@photo.png", "num_workers=-1"), ValueError, "num_workers=-1: the number of"),
    (("input=@photo.png", "boxes=@b.json"), ValueError, "only read with crop=box .* whole "
                                                         "photos"),
    (("input=@photo.png", "boxes=@b.json", "crop=faces"), ValueError, "add crop=box"),
])
def test_bad_arguments_are_one_clear_error(compose, ckpt, tmp_path, overrides, error, message):
    (tmp_path / "empty").mkdir()
    write_image(tmp_path / "photo.png", (20, 20))
    (tmp_path / "video.mp4").write_bytes(b"not a video")
    overrides = [o.replace("@", f"{tmp_path}/") for o in overrides]
    with pytest.raises(error, match=message):
        predict(predict_config(compose, tmp_path, ckpt, *overrides,
                               f"output_dir={tmp_path / 'out'}"))


def test_boxes_and_output_dir_are_checked_before_the_model_loads(compose, tmp_path):
    write_image(tmp_path / "photo.png", (20, 20))
    (tmp_path / "b.json").write_text('{"photo.png": [[10, 10]]}')
    (tmp_path / "afile").write_text("")
    absent = tmp_path / "absent.ckpt"  # loading it would fail: these errors come first
    with pytest.raises(ValueError, match=fr'boxes={tmp_path}/b.json: "photo.png" box '
                                         fr'\[10, 10\] needs 4 numbers'):
        predict(predict_config(compose, tmp_path, absent, f"input={tmp_path}/photo.png", "crop=box",
                               f"boxes={tmp_path}/b.json", f"output_dir={tmp_path / 'out'}"))
    with pytest.raises(ValueError, match=fr"output_dir={tmp_path}/afile/sub: cannot create "
                                         fr"folder \({tmp_path}/afile is a file\)"):
        predict(predict_config(compose, tmp_path, absent, f"input={tmp_path}/photo.png",
                               f"output_dir={tmp_path}/afile/sub"))


@ONCE
def test_photos_without_a_face_or_a_usable_box_get_no_files_and_a_count(compose, ckpt,
                                                                        tmp_path, caplog):
    photos = tmp_path / "in"
    for name in ("ok", "inverted", "outside", "missing", "empty"):
        write_image(photos / f"{name}.png", (40, 40))
    (tmp_path / "b.json").write_text('{"ok.png": [[0, 0, 20, 20]], "inverted.png": '
                                     '[[30, 30, 10, 10]], "outside.png": [[50, 0, 90, 40]], '
                                     '"empty.png": []}')
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        boxed = predict(predict_config(compose, tmp_path, ckpt, f"input={photos}",
                                       f"output_dir={out}", "crop=box",
                                       f"boxes={tmp_path}/b.json", "margin=0"))
    assert (boxed["images"], boxed["failed"], boxed["without_face"]) == (1, 0, 4)
    assert sorted(p.name for p in out.glob("*_mask.png")) == ["ok_mask.png"]
    assert f'missing.png: no box for it in boxes={tmp_path}/b.json (key "missing.png")' \
        in caplog.text
    assert 'empty.png: no box for it' in caplog.text
    assert "inverted.png: box [30, 30, 10, 10] is empty or outside the 40x40 photo" in caplog.text
    assert "outside.png: box [50, 0, 90, 40] is empty or outside the 40x40 photo" in caplog.text
    assert "1 images, 0 failed, 4 without a face/box, 0 skipped" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # random noise: the detector finds no face
        faces = predict(predict_config(compose, tmp_path, ckpt, f"input={photos}/ok.png",
                                       f"output_dir={tmp_path / 'faces'}", "crop=faces"))
    assert (faces["images"], faces["without_face"]) == (0, 1)
    assert "ok.png: no face detected" in caplog.text
    assert not (tmp_path / "faces" / "ok_mask.png").exists()
    nothing = predict_config(compose, tmp_path, ckpt, f"input={photos}/missing.png",
                             f"output_dir={tmp_path / 'o2'}", "crop=box",
                             f"boxes={tmp_path}/b.json")
    with pytest.raises(SystemExit) as exit_:  # nothing parsed: the exit code says so
        predict_command.main.__wrapped__(nothing)
    assert exit_.value.code == 1


@ONCE
def test_a_bad_box_beside_a_good_one_is_a_warning_and_a_count_not_dropped_silently(
        compose, ckpt, tmp_path, caplog):
    write_image(tmp_path / "in" / "two.png", (40, 40))
    (tmp_path / "b.json").write_text('{"two.png": [[0, 0, 20, 20], [50, 0, 90, 40], '
                                     '[30, 10, 30, 30]]}')
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        result = predict(predict_config(compose, tmp_path, ckpt, f"input={tmp_path / 'in'}",
                                        f"output_dir={out}", "crop=box", f"boxes={tmp_path}/b.json",
                                        "margin=0"))
    assert (result["images"], result["without_face"], result["unusable_boxes"]) == (1, 0, 2)
    for box in ("[50, 0, 90, 40]", "[30, 10, 30, 30]"):  # outside; no width
        assert (f"box left out: {tmp_path / 'in' / 'two.png'}: box {box} is empty or "
                f"outside the 40x40 photo") in caplog.text
    assert "1 images, 0 failed, 2 unusable boxes left out, 0 skipped" in caplog.text
    mask = np.asarray(Image.open(out / "two_mask.png"))  # the good box is parsed
    assert (mask[20:] == 0).all() and (mask[:, 20:] == 0).all()


@pytest.mark.slow  # a whole command, end to end: in CI's slow suite
def test_bad_videos_and_photos_over_the_decode_limit_are_counted_and_the_run_goes_on(
        ckpt, tmp_path):
    photos = tmp_path / "in"
    write_image(photos / "a.png", (40, 40))
    write_image(photos / "b.png", (40, 40), 1)
    header_only_png(photos / "bomb.png", 14000, 14000)
    (photos / "a_empty.mp4").write_bytes(b"")
    write_video(photos / "z_clip.mp4")
    clip = (photos / "z_clip.mp4").read_bytes()
    (photos / "m_cut.mp4").write_bytes(clip[:len(clip) // 2])  # a half-written video
    out = tmp_path / "out"
    done = run_predict(f"ckpt={ckpt}", f"input={photos}", f"output_dir={out}",
                       f"hydra.run.dir={tmp_path / 'run'}")
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "Traceback" not in log
    limit = f"{2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} MP"
    assert f"bomb.png: 196 MP, over Pillow's decode limit of {limit}" in log
    assert "a_empty.mp4: OpenCV cannot open this video" in log
    assert "m_cut.mp4: OpenCV cannot open this video" in log
    # a.png, b.png and the 4 frames of the clip that comes after the bad videos
    assert "6 images, 3 failed, 0 skipped" in log
    assert (out / "a_mask.png").is_file() and (out / "b_mask.png").is_file()
    assert (out / "z_clip_overlay.mp4").stat().st_size > 0
    assert not (out / "a_empty_frames").exists()


def _face_video(path: Path, frames: str, fps: int = 2) -> None:
    """A 160x160 video: ``F`` a frame of scikit-image's astronaut (the detector finds her
    face), ``.`` noise (it finds none)."""
    astronaut = cv2.resize(pytest.importorskip("skimage.data").astronaut(), (160, 160),
                           interpolation=cv2.INTER_AREA)
    noise = np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (160, 160))
    for kind in frames:
        writer.write(cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR) if kind == "F" else noise)
    writer.release()


def test_video_frames_without_a_face_are_background_counted_and_never_parsed_whole(
        compose, ckpt, tmp_path, caplog):
    (tmp_path / "in").mkdir()
    _face_video(tmp_path / "in" / "talk.mp4", "..FF..")  # at 2 fps a face is held 1 frame
    _face_video(tmp_path / "in" / "wall.mp4", "...")
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        result = predict(predict_config(compose, tmp_path, ckpt, f"input={tmp_path / 'in'}",
                                        f"output_dir={out}", "crop=faces"))
    talk = result["videos"][str(tmp_path / "in" / "talk.mp4")]
    assert (talk["frames_without_face"], talk["frames_face_held"]) == ([0, 1, 5], 1)
    assert (result["images"], result["without_face"], result["faceless_frames"]) == (3, 1, 3)
    assert (f"no face in 3 of the 6 frames of {tmp_path / 'in' / 'talk.mp4'} (frames 0-1, 5; "
            f"crop=faces): their masks are all background") in caplog.text
    assert (f"no mask: {tmp_path / 'in' / 'wall.mp4'}: no face detected in any of its 3 "
            f"frames") in caplog.text
    assert ("3 images, 0 failed, 1 without a face/box, 3 video frames without a face "
            "(background), 0 skipped") in caplog.text
    masks = [np.asarray(Image.open(f)) for f in sorted((out / "talk_frames").glob("*.png"))]
    assert len(masks) == 6 and all((masks[n] == 0).all() for n in (0, 1, 5))
    capture = cv2.VideoCapture(str(out / "talk_mask.mp4"))  # every frame, at the input's rate
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 6 and capture.get(cv2.CAP_PROP_FPS) == 2
    capture.release()
    assert sorted(p.name for p in out.iterdir()) == ["talk_frames", "talk_mask.mp4",
                                                      "talk_overlay.mp4", "talk_video.json"]
    (tmp_path / "b.json").write_text('{"talk.mp4": [[0, 0, 80, 80]]}')
    boxed = predict(predict_config(compose, tmp_path, ckpt, f"input={tmp_path / 'in'}/talk.mp4",
                                   f"output_dir={tmp_path / 'boxed'}", "crop=box",
                                   f"boxes={tmp_path}/b.json"))
    assert (boxed["images"], boxed["without_face"]) == (0, 1)  # not parsed whole
    assert "talk.mp4: crop=box gives boxes per photo, not per video frame" in caplog.text


def test_a_wrong_checkpoint_is_refused_by_name(compose, tmp_path):
    write_image(tmp_path / "photo.png", (20, 20))
    (tmp_path / "model.ckpt").write_bytes(b"junk")
    with pytest.raises(Exception, match="model.ckpt"):
        predict(predict_config(compose, tmp_path, tmp_path / "model.ckpt",
                               f"input={tmp_path}/photo.png"))


def test_crop_box_reads_boxes_from_json(compose, ckpt, tmp_path):
    write_image(tmp_path / "in" / "p.png", (40, 40))
    (tmp_path / "boxes.json").write_text('{"p.png": [[0, 0, 20, 20]]}')
    out = tmp_path / "out"
    result = predict(predict_config(compose, tmp_path, ckpt, f"input={tmp_path / 'in'}",
                                    f"output_dir={out}", "crop=box",
                                    f"boxes={tmp_path / 'boxes.json'}", "margin=0",
                                    "save_overlay=false"))
    assert result["images"] == 1 and result["failed"] == 0
    mask = np.asarray(Image.open(out / "p_mask.png"))
    assert (mask[20:] == 0).all() and (mask[:, 20:] == 0).all()
    assert not (out / "p_overlay.png").exists()

