"""Videos whose frames or timing differ from what their header says: each is a warning and
a record in ``<stem>_video.json``, never a short or re-timed output passed off as whole;
and a rerun remakes outputs that went missing."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from predict_helpers import predict_config, write_video

from faceparse.inference.predictor import ParseResult
from faceparse.inference.video_outputs import VideoOutputs
from faceparse.labels import get_scheme
from faceparse.predict import predict

pytestmark = pytest.mark.usefixtures("torch_single_thread")
REAL_CAPTURE = cv2.VideoCapture


def _header(monkeypatch, name: str, **changes) -> None:
    """``cv2.VideoCapture`` of the file called ``name`` as a container that says otherwise:
    ``frames`` added to its frame count, its ``fps``, or ``times`` (ms) per frame read."""
    class Capture:
        def __init__(self, path: str) -> None:
            self.capture, self.read_count = REAL_CAPTURE(path), 0
            self.ours = Path(path).name == name

        def get(self, prop: int) -> float:
            value = self.capture.get(prop)
            if self.ours and prop == cv2.CAP_PROP_FRAME_COUNT:
                return value + changes.get("frames", 0)
            if self.ours and prop == cv2.CAP_PROP_FPS and "fps" in changes:
                return changes["fps"]
            if self.ours and prop == cv2.CAP_PROP_POS_MSEC and "times" in changes:
                return changes["times"][self.read_count - 1]
            return value

        def read(self):
            self.read_count += 1
            return self.capture.read()

        def __getattr__(self, attr: str):
            return getattr(self.capture, attr)

    monkeypatch.setattr(cv2, "VideoCapture", Capture)


def _record(out: Path) -> dict:
    return json.loads((out / "clip_video.json").read_text())


def _run(compose, ckpt, tmp_path: Path, *overrides: str) -> dict:
    return predict(predict_config(compose, tmp_path, ckpt, f"input={tmp_path / 'in'}",
                                  f"output_dir={tmp_path / 'out'}", *overrides))


def test_a_video_that_ends_before_its_declared_frames_is_a_warning_and_a_record(
        compose, ckpt, tmp_path, monkeypatch, caplog):
    write_video(tmp_path / "in" / "clip.mp4", frames=4)
    _header(monkeypatch, "clip.mp4", frames=6)  # a damaged frame stopped the decoder at 4
    with caplog.at_level(logging.WARNING):
        done = _run(compose, ckpt, tmp_path)
    assert done["images"] == 4 and done["videos"][str(tmp_path / "in" / "clip.mp4")][
        "declared_frames"] == 10
    assert "decoded 4 of the 10 frames its header declares" in caplog.text
    assert (_record(tmp_path / "out")["frames"], _record(tmp_path / "out")["declared_frames"]
            ) == (4, 10)


def test_an_off_by_one_container_count_is_no_warning(compose, ckpt, tmp_path, monkeypatch,
                                                     caplog):
    write_video(tmp_path / "in" / "clip.mp4", frames=4)
    _header(monkeypatch, "clip.mp4", frames=1)
    with caplog.at_level(logging.WARNING):
        _run(compose, ckpt, tmp_path)
    assert "its header declares" not in caplog.text
    assert "declared_frames" not in _record(tmp_path / "out")


def test_a_variable_frame_rate_is_a_warning_with_every_frame_time_recorded(
        compose, ckpt, tmp_path, monkeypatch, caplog):
    write_video(tmp_path / "in" / "clip.mp4", frames=4)  # 10 fps: 100 ms a frame on average...
    times = [0.0, 50.0, 100.0, 400.0]  # ...but a phone's stall before the last one
    _header(monkeypatch, "clip.mp4", fps=10.0, times=times)
    with caplog.at_level(logging.WARNING):
        _run(compose, ckpt, tmp_path)
    assert "variable frame rate" in caplog.text and "drift up to 0.10 s" in caplog.text
    assert _record(tmp_path / "out")["frame_times_ms"] == times
    assert _record(tmp_path / "out")["fps"] == 10.0


def test_a_backend_without_frame_times_is_no_variable_rate(compose, ckpt, tmp_path,
                                                           monkeypatch, caplog):
    write_video(tmp_path / "in" / "clip.mp4", frames=4)
    _header(monkeypatch, "clip.mp4", times=[0.0] * 4)  # no times at all
    with caplog.at_level(logging.WARNING):
        _run(compose, ckpt, tmp_path)
    assert "variable frame rate" not in caplog.text


def test_a_constant_rate_records_no_frame_times(compose, ckpt, tmp_path, caplog):
    write_video(tmp_path / "in" / "clip.mp4", frames=4)
    with caplog.at_level(logging.WARNING):
        _run(compose, ckpt, tmp_path)
    assert "variable frame rate" not in caplog.text
    assert "frame_times_ms" not in _record(tmp_path / "out")


@pytest.mark.parametrize(("fps", "written", "message"), [
    (0.001, 0.01, "its header says 0.001 fps, slower than the video writer takes"),
    (0.0, 25.0, "no frame rate in its header: its outputs are written at 25 fps"),
    (float("nan"), 25.0, "no frame rate in its header"),
])
def test_a_frame_rate_the_writer_cannot_take_is_a_warning_not_a_stopped_run(
        compose, ckpt, tmp_path, monkeypatch, caplog, fps, written, message):
    write_video(tmp_path / "in" / "clip.mp4", frames=3)
    _header(monkeypatch, "clip.mp4", fps=fps)
    with caplog.at_level(logging.WARNING):
        done = _run(compose, ckpt, tmp_path)
    assert done["images"] == 3 and done["failed"] == 0
    assert message in caplog.text
    assert _record(tmp_path / "out")["fps"] == written
    capture = REAL_CAPTURE(str(tmp_path / "out" / "clip_overlay.mp4"))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(written)
    capture.release()


def test_a_rerun_remakes_a_deleted_mask_video_and_frames_asked_for_now(
        compose, ckpt, tmp_path, caplog):
    write_video(tmp_path / "in" / "clip.mp4", frames=3)
    out = tmp_path / "out"
    assert _run(compose, ckpt, tmp_path, "save_frames=false")["images"] == 3
    assert _run(compose, ckpt, tmp_path, "save_frames=false")["skipped"] == 1
    with caplog.at_level(logging.WARNING):
        framed = _run(compose, ckpt, tmp_path, "save_frames=true")
    assert (framed["images"], framed["redone"]) == (3, 1)
    assert "its frame masks clip_frames/ (save_frames=true) are missing" in caplog.text
    assert len(list((out / "clip_frames").glob("*_mask.png"))) == 3
    (out / "clip_mask.mp4").unlink()
    again = _run(compose, ckpt, tmp_path)
    assert (again["images"], again["redone"]) == (3, 1)
    assert (out / "clip_mask.mp4").is_file()


def test_a_stale_video_that_cannot_be_read_now_counts_as_failed_not_redone(
        compose, ckpt, tmp_path):
    write_video(tmp_path / "in" / "clip.mp4", frames=3)
    assert _run(compose, ckpt, tmp_path)["images"] == 3
    (tmp_path / "in" / "clip.mp4").write_bytes(b"not a video any more")
    again = _run(compose, ckpt, tmp_path)
    assert (again["images"], again["failed"], again["redone"]) == (0, 1, 0)


def test_a_rerun_remakes_frame_masks_with_gaps(compose, ckpt, tmp_path, caplog):
    """An interrupted run, a user's deletion: any frame mask the record's count lacks."""
    write_video(tmp_path / "in" / "clip.mp4", frames=4)
    frames = tmp_path / "out" / "clip_frames"
    assert _run(compose, ckpt, tmp_path)["images"] == 4
    (frames / "000002_mask.png").unlink()
    with caplog.at_level(logging.WARNING):
        again = _run(compose, ckpt, tmp_path)
    assert (again["images"], again["redone"], again["skipped"]) == (4, 1, 0)
    assert "1 of its 4 frame masks in clip_frames/ (e.g. 000002_mask.png) are missing" in (
        caplog.text)
    assert len(list(frames.glob("*_mask.png"))) == 4
    assert _run(compose, ckpt, tmp_path)["skipped"] == 1


def test_outputs_a_video_left_under_its_plain_name_are_a_warning(compose, ckpt, tmp_path,
                                                                  caplog):
    write_video(tmp_path / "in" / "clip.mp4", frames=2)
    assert _run(compose, ckpt, tmp_path, "save_frames=false")["images"] == 2
    write_video(tmp_path / "in" / "clip.mov", frames=2)  # now its outputs are clip_mp4_*
    with caplog.at_level(logging.WARNING):
        assert _run(compose, ckpt, tmp_path, "save_frames=false")["images"] == 4
    out = tmp_path / "out"
    assert (f"left behind: {out / 'clip_video.json'} and its videos are "
            f"{tmp_path / 'in' / 'clip.mp4'}'s outputs from before") in caplog.text
    assert "clip.mov's outputs" not in caplog.text


def test_a_video_too_small_for_the_writer_is_a_bad_input_not_a_stopped_run(
        compose, ckpt, tmp_path, monkeypatch, caplog):
    write_video(tmp_path / "in" / "clip.mp4", frames=2)
    write_video(tmp_path / "in" / "thin.mp4", frames=2)

    class Thin:  # a 1 px wide video, which OpenCV's mp4v writer cannot take
        def __init__(self, path: str) -> None:
            self.capture, self.thin = REAL_CAPTURE(path), Path(path).name == "thin.mp4"

        def read(self):
            ok, frame = self.capture.read()
            return ok, (frame[:, :1].copy() if ok and self.thin else frame)

        def __getattr__(self, attr: str):
            return getattr(self.capture, attr)

    monkeypatch.setattr(cv2, "VideoCapture", Thin)
    with caplog.at_level(logging.WARNING):
        done = _run(compose, ckpt, tmp_path, "save_frames=false")
    assert (done["images"], done["failed"]) == (2, 1)
    assert (f"{tmp_path / 'in' / 'thin.mp4'}: its frames are 1x32 px, too small for a video"
            in caplog.text)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "clip_mask.mp4", "clip_overlay.mp4", "clip_video.json"]


def test_odd_frame_sizes_say_what_the_videos_hold(tmp_path, caplog):
    rgb = np.zeros((57, 101, 3), np.uint8)
    result = ParseResult(np.zeros((57, 101), np.uint8), get_scheme("ourface"))
    with caplog.at_level(logging.WARNING), VideoOutputs(
            tmp_path / "clip.mp4", tmp_path / "out" / "clip", 10.0, False, 0.5) as outputs:
        for n in range(2):
            outputs.write(n, rgb, result)
        outputs.keep = True
    assert "its frames are 101x57 px; the mp4v videos hold 100x56" in caplog.text
    capture = REAL_CAPTURE(str(tmp_path / "out" / "clip_mask.mp4"))
    ok, frame = capture.read()
    capture.release()
    assert ok and frame.shape[:2] == (56, 100)  # what the warning says
