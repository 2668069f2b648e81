"""``faceparse.predict`` when a write fails (a full disk, a short video): one line naming
the output and its input, nothing partial kept, and a rerun that resumes."""

from __future__ import annotations

import errno
import re

import cv2
import pytest
from predict_helpers import disk_full_for, predict_config, refusal, write_image, write_video
from test_video_outputs import short_writer

import faceparse.predict as predict_command
from faceparse.inference.outputs import OutputWriteError
from faceparse.predict import predict

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_an_os_error_is_logged_by_its_message_not_its_errno(compose, tmp_path, monkeypatch,
                                                            caplog):
    def full_disk(cfg):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "a_mask.png"))

    monkeypatch.setattr(predict_command, "predict", full_disk)
    error = refusal(predict_config(compose, tmp_path, tmp_path / "x.ckpt"), caplog)
    assert f"No space left on device: '{tmp_path / 'a_mask.png'}'" in error


def test_a_failed_write_stops_the_run_in_one_line_naming_the_output_and_its_photo(
        compose, ckpt, tmp_path, monkeypatch, caplog):
    for n, name in enumerate("abc"):
        write_image(tmp_path / "in" / f"{name}.png", (20, 20), n)
    out = tmp_path / "out"
    disk_full_for(monkeypatch, "b_")
    cfg = predict_config(compose, tmp_path, ckpt, f"input={tmp_path / 'in'}", f"output_dir={out}",
                         "batch_size=1")
    assert refusal(cfg, caplog) == (
        f"cannot write {out / 'b_color.png'} (from {tmp_path / 'in' / 'b.png'}): "
        f"No space left on device; stopped, the outputs written so far are kept "
        f"(rerun to resume once fixed)")
    assert sorted(p.name for p in out.iterdir()) == ["a_color.png", "a_mask.png"]  # no .tmp


def test_a_failed_video_write_names_the_frame_and_the_video_and_keeps_no_partial_video(
        compose, ckpt, tmp_path, monkeypatch):
    write_video(tmp_path / "clip.mp4")
    out = tmp_path / "out"
    disk_full_for(monkeypatch, "000002_")
    cfg = predict_config(compose, tmp_path, ckpt, f"input={tmp_path / 'clip.mp4'}",
                         f"output_dir={out}")
    with pytest.raises(OutputWriteError, match=re.escape(
            f"cannot write {out / 'clip_frames' / '000002_mask.png'} (from "
            f"{tmp_path / 'clip.mp4'}): No space left on device; stopped")):
        predict(cfg)
    assert list(out.iterdir()) == []  # no partial video or frames: a rerun parses it again
    monkeypatch.undo()
    assert predict(cfg)["images"] == 4 and (out / "clip_overlay.mp4").stat().st_size > 0


def test_a_video_opencv_wrote_short_stops_the_run_naming_it_and_keeps_no_video(
        compose, ckpt, tmp_path, monkeypatch, caplog):
    write_video(tmp_path / "clip.mp4")
    out = tmp_path / "out"
    short_writer(monkeypatch, keep=2)  # no frame PNGs either: the videos are all there is
    cfg = predict_config(compose, tmp_path, ckpt, f"input={tmp_path / 'clip.mp4'}",
                         f"output_dir={out}", "save_frames=false")
    assert refusal(cfg, caplog) == (
        f"cannot write {out / 'clip_mask.mp4'} (from {tmp_path / 'clip.mp4'}): "
        f"the video holds 2 of the 4 frames written (disk full or a file system "
        f"error while writing?); stopped, the outputs written so far are kept "
        f"(rerun to resume once fixed)")
    assert list(out.iterdir()) == []  # no final video, no partial: a rerun parses it again
    monkeypatch.undo()
    assert predict(cfg)["images"] == 4
    assert sorted(p.name for p in out.iterdir()) == ["clip_mask.mp4", "clip_overlay.mp4",
                                                     "clip_video.json"]
    capture = cv2.VideoCapture(str(out / "clip_overlay.mp4"))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 4
    capture.release()


