"""A video's output files: renamed into place only when they read back with every frame
(OpenCV's ``VideoWriter.write`` fails silently). The command end to end:
tests/test_predict_command.py."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from faceparse.inference.listing import is_output_name
from faceparse.inference.outputs import OutputWriteError
from faceparse.inference.predictor import ParseResult
from faceparse.inference.video_outputs import VideoOutputs
from faceparse.labels import get_scheme

FRAMES = 4


def short_writer(monkeypatch, keep: int, empty: bool = False, only: str = "") -> None:
    """``cv2.VideoWriter`` as on a disk that fills mid-run, for files whose name has
    ``only``: ``write`` takes ``keep`` frames and drops the rest without a word (OpenCV's
    returns nothing); ``empty``: the file is left empty."""
    real = cv2.VideoWriter

    class Short:
        def __init__(self, path: str, *args) -> None:
            self.path, self.writer, self.count = Path(path), real(path, *args), 0
            self.failing = only in self.path.name

        def isOpened(self) -> bool:
            return self.writer.isOpened()

        def write(self, frame: np.ndarray) -> None:
            self.count += 1
            if not self.failing or self.count <= keep:
                self.writer.write(frame)

        def release(self) -> None:
            self.writer.release()
            if self.failing and empty:
                self.path.write_bytes(b"")

    monkeypatch.setattr(cv2, "VideoWriter", Short)


def write_video(tmp_path: Path, save_frames: bool = False, frames: int = FRAMES,
                label: int = 0, keep: bool = True, stop_after: int | None = None) -> Path:
    """``frames`` frames through ``VideoOutputs`` as ``predict_video`` writes them, each
    mask's labels offset by ``label``; ``stop_after``: a KeyboardInterrupt after that many
    frames. The output folder."""
    rgb = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    result = ParseResult((np.arange(32 * 48, dtype=np.uint8).reshape(32, 48) + label) % 3,
                         get_scheme("ourface"))
    with VideoOutputs(tmp_path / "clip.mp4", tmp_path / "out" / "clip", 10.0, save_frames,
                      0.5) as outputs:
        for n in range(frames):
            if n == stop_after:
                raise KeyboardInterrupt
            outputs.write(n, rgb, result)
        outputs.keep = keep
    return tmp_path / "out"


def first_label(mask: Path) -> int:
    """The label of a frame mask's first pixel: which run wrote it."""
    return int(cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)[0, 0])


def frame_count(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    return count


@pytest.mark.parametrize(("keep", "empty", "only", "problem"), [
    (3, False, "", f"the video holds 3 of the {FRAMES} frames written"),
    (0, False, "", "OpenCV cannot read back the video it wrote"),  # a header, no frame
    (FRAMES, True, "", "the video is missing or empty once written"),
    (1, False, "overlay", f"the video holds 1 of the {FRAMES} frames written"),
])
@pytest.mark.parametrize("save_frames", [False, True])
def test_a_video_written_short_is_an_output_write_error_naming_it_and_no_video_is_kept(
        tmp_path, monkeypatch, keep, empty, only, problem, save_frames):
    short_writer(monkeypatch, keep, empty, only)
    named = tmp_path / "out" / f"clip_{only or 'mask'}.mp4"
    with pytest.raises(OutputWriteError, match=re.escape(
            f"cannot write {named} (from {tmp_path / 'clip.mp4'}): {problem} (disk full or "
            f"a file system error while writing?); stopped")):
        write_video(tmp_path, save_frames)
    # nothing is renamed into place (a rerun parses it again), no partial is left
    assert list((tmp_path / "out").iterdir()) == []


def test_a_finished_video_is_renamed_into_place_with_every_frame(tmp_path):
    out = write_video(tmp_path)
    assert sorted(p.name for p in out.iterdir()) == ["clip_mask.mp4", "clip_overlay.mp4"]
    assert frame_count(out / "clip_mask.mp4") == frame_count(out / "clip_overlay.mp4") == FRAMES


def test_a_frame_count_the_container_gets_wrong_is_checked_by_reading_the_frames(
        tmp_path, monkeypatch):
    real = cv2.VideoCapture

    class Approximate:  # as some containers' index: the count is off by one
        def __init__(self, path: str) -> None:
            self.capture = real(path)

        def get(self, prop: int) -> float:
            return self.capture.get(prop) + (prop == cv2.CAP_PROP_FRAME_COUNT)

        def __getattr__(self, name: str):
            return getattr(self.capture, name)

    monkeypatch.setattr(cv2, "VideoCapture", Approximate)
    out = write_video(tmp_path)  # the frames are all there: kept
    assert sorted(p.name for p in out.iterdir()) == ["clip_mask.mp4", "clip_overlay.mp4"]
    short_writer(monkeypatch, keep=2)
    with pytest.raises(OutputWriteError, match="holds 2 of the 4 frames written"):
        write_video(tmp_path / "again")


def test_a_redo_replaces_every_earlier_output_and_leaves_the_users_own_files(
        tmp_path, caplog):
    out = write_video(tmp_path, save_frames=True, frames=6, label=1)
    (out / "clip_frames" / "notes.txt").write_text("mine")
    write_video(tmp_path, save_frames=True, frames=3, label=2)  # a shorter video now
    masks = sorted(p.name for p in (out / "clip_frames").glob("*_mask.png"))
    assert masks == ["000000_mask.png", "000001_mask.png", "000002_mask.png"]
    assert {first_label(out / "clip_frames" / m) for m in masks} == {2}
    assert (out / "clip_frames" / "notes.txt").read_text() == "mine"
    assert frame_count(out / "clip_overlay.mp4") == 3
    with caplog.at_level(logging.WARNING):
        write_video(tmp_path, save_frames=False, frames=3)
    assert sorted(p.name for p in (out / "clip_frames").iterdir()) == ["notes.txt"]
    assert "removed 3 frame masks of" in caplog.text and "save_frames=false" in caplog.text


def test_a_redo_stopped_part_way_leaves_the_earlier_frames_and_no_overlay_to_keep(tmp_path):
    """The earlier frame masks are untouched and nothing is half-new; the earlier overlay,
    the sign of a finished video, is only replaced at the very end."""
    out = write_video(tmp_path, save_frames=True, frames=4, label=1)
    with pytest.raises(KeyboardInterrupt):
        write_video(tmp_path, save_frames=True, frames=4, label=2, stop_after=2)
    masks = sorted((out / "clip_frames").iterdir())
    assert len(masks) == 4 and {first_label(m) for m in masks} == {1}
    assert sorted(p.name for p in out.iterdir()) == ["clip_frames", "clip_mask.mp4",
                                                     "clip_overlay.mp4"]
    partial = out / ".clip_frames.partial"  # as a killed run leaves it: the next one clears it
    partial.mkdir()
    (partial / "000009_mask.png").write_bytes(b"old")
    write_video(tmp_path, save_frames=True, frames=2, label=2)
    assert not partial.exists() and len(list((out / "clip_frames").iterdir())) == 2


def test_a_video_without_any_face_now_loses_its_earlier_outputs_with_a_warning(
        tmp_path, caplog):
    out = write_video(tmp_path, save_frames=True)
    with caplog.at_level(logging.WARNING):
        write_video(tmp_path, save_frames=True, keep=False)
    assert list(out.iterdir()) == []
    assert (f"removed clip_overlay.mp4, clip_mask.mp4, {FRAMES} frame masks in clip_frames/: "
            f"the earlier outputs of {tmp_path / 'clip.mp4'}, which has no face in any frame "
            f"now") in caplog.text


def test_a_file_where_the_frame_masks_go_is_refused_before_anything_is_replaced(tmp_path):
    out = write_video(tmp_path)  # the earlier run: videos, no frame masks
    (out / "clip_frames").write_text("a file of the user's")
    with pytest.raises(OutputWriteError, match=re.escape(
            f"cannot write {out / 'clip_frames'} (from {tmp_path / 'clip.mp4'}): a file is "
            f"there, not the folder of frame masks (save_frames=true)")):
        write_video(tmp_path, save_frames=True)
    assert sorted(p.name for p in out.iterdir()) == ["clip_frames", "clip_mask.mp4",
                                                     "clip_overlay.mp4"]


def test_partial_files_a_killed_run_left_are_cleared_and_never_taken_for_inputs(tmp_path):
    partial = tmp_path / "out" / ".clip_frames.partial"
    partial.mkdir(parents=True)
    (partial / "000000_mask.png").write_bytes(b"old")
    write_video(tmp_path, save_frames=False)
    assert not partial.exists()
    for name in (".clip_overlay.partial.mp4", ".clip_mask.partial.mp4",
                 ".clip_overlay.sound.mp4"):
        assert is_output_name(tmp_path / name)
    assert not is_output_name(tmp_path / "holiday.partial.mp4")  # a user's own video
