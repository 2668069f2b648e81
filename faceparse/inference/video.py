"""Videos through a parser: per-frame masks, a mask video, an overlay video, flicker.

Frame-by-frame parsing flickers at class borders. ``smoothing`` keeps an exponential
moving average of the model-resolution logits (``s = smoothing * s + (1 - smoothing) *
new``); with ``crop=faces`` the face boxes are averaged the same way. Flicker is the share
of pixels whose label changes between consecutive frames, measured at model resolution
with and without the smoothing on the same frames, so the report shows what it buys.

With ``crop=faces`` every frame is still written, so the mask video keeps the input's
frame count and timing and ``<stem>_frames/<n>_mask.png`` has no gaps. A face the detector
misses for up to :data:`HOLD_SECONDS` keeps its last box (the LBP cascade drops single
frames of a face that is there); a frame with no face beyond that is not parsed: its mask
is all background and its number is reported (``frames_without_face``), and the smoothing
starts afresh at the next face. A video with no face in any frame is like a photo without
one: nothing of it is kept. ``crop=box`` has no boxes for video frames and is refused.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from rich.progress import Progress

from faceparse.data.io import BadSampleError, write_atomic
from faceparse.inference.outputs import mask_text, overlay, png_bytes, writing_outputs_of
from faceparse.inference.provenance import record_file_text

log = logging.getLogger(__name__)

__all__ = ["HOLD_SECONDS", "NO_BOXES_FOR_VIDEO", "check_smoothing", "flicker", "frame_ranges",
           "predict_video"]

HOLD_SECONDS = 0.5  # crop=faces: a face missed for up to this long keeps its last box
NO_BOXES_FOR_VIDEO = ("crop=box gives boxes per photo, not per video frame: parse videos "
                      "with crop=faces or crop=none")


def check_smoothing(smoothing: Any) -> float:
    """``smoothing`` as a float in [0, 1), or a ValueError naming the option."""
    try:
        value = float(smoothing)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0 <= value < 1:  # NaN fails too
        raise ValueError(f"smoothing={smoothing!r}: give a number in [0, 1) (0: no "
                         f"smoothing; 0.6 keeps 60% of the previous frames' logits)")
    return value


def flicker(previous: torch.Tensor | None, current: torch.Tensor) -> float | None:
    """Share of pixels whose label differs from the previous frame's (None on frame 1)."""
    if previous is None or previous.shape != current.shape:
        return None
    return float((previous != current).float().mean())


def _open(path: Path) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise BadSampleError(f"{path}: OpenCV cannot open this video (empty, truncated, not "
                             f"a video or an unsupported codec); convert it to H.264 .mp4 or "
                             f"give its frames")
    return capture


def _smooth_box(old: tuple | None, new: tuple, keep: float) -> tuple[int, int, int, int]:
    if old is None:
        return new
    return tuple(round(keep * o + (1 - keep) * n) for o, n in zip(old, new, strict=True))


def frame_ranges(frames: list[int], most: int = 8) -> str:
    """``[0, 1, 2, 5, 9, 10]`` -> ``"0-2, 5, 9-10"``; after ``most`` ranges, ``...``."""
    runs: list[list[int]] = []
    for n in frames:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    shown = [f"{a}-{b}" if b > a else f"{a}" for a, b in runs[:most]]
    return ", ".join(shown + (["..."] if len(runs) > most else []))


class _Outputs:
    """One video's files: ``<stem>_overlay.mp4`` and ``<stem>_mask.mp4``, written under
    hidden partial names and renamed when the video is done (the overlay, which a rerun
    takes as the sign of a finished video, last), ``<stem>_frames/<n>_mask.png``, and,
    given a ``record``, ``<stem>_video.json``: what made them (written before the videos
    are renamed), which a rerun judges with or without frame masks.

    As a context manager: on leaving, the videos are kept if ``keep`` (else removed with
    the frames written); after an error the partial videos are removed and the frames
    kept. A failed write is an :class:`OutputWriteError` naming the file and the video;
    so is a video that does not read back with every frame written, since OpenCV's
    ``VideoWriter.write`` fails silently (disk full, a file system error mid-run).
    """

    def __init__(self, source: Path, out_stem: Path, fps: float, save_frames: bool,
                 alpha: float, record: dict[str, Any] | None = None,
                 scheme: str | None = None) -> None:
        self.source, self.fps, self.alpha, self.keep = source, fps, alpha, False
        self.record = record  # what made the outputs (see faceparse.inference.provenance)
        self.scheme = scheme  # the label scheme the record file names
        self.record_file = out_stem.with_name(f"{out_stem.name}_video.json")
        self.size: list[int] = []  # (width, height) of the frames
        self.finals = {kind: out_stem.with_name(f"{out_stem.name}_{kind}.mp4")
                       for kind in ("mask", "overlay")}  # the overlay renamed last
        self.partials = {kind: path.with_name(f".{path.stem}.partial.mp4")
                         for kind, path in self.finals.items()}
        self.frames_dir = out_stem.with_name(f"{out_stem.name}_frames") if save_frames else None
        self.writers: dict[str, cv2.VideoWriter] = {}
        self.frames: list[Path] = []
        self.written = 0  # frames handed to each video writer
        with writing_outputs_of(source):
            (self.frames_dir or out_stem.parent).mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> _Outputs:
        return self

    def write(self, n: int, rgb: np.ndarray, result) -> None:
        """Frame ``n``'s mask and overlay."""
        color = result.color()
        with writing_outputs_of(self.source):
            if not self.writers:
                self._open(rgb.shape[1], rgb.shape[0])
            self.writers["overlay"].write(cv2.cvtColor(overlay(rgb, color, self.alpha),
                                                       cv2.COLOR_RGB2BGR))
            self.writers["mask"].write(cv2.cvtColor(color, cv2.COLOR_RGB2BGR))
            self.written += 1
            if self.frames_dir is not None:
                self.frames.append(self.frames_dir / f"{n:06d}_mask.png")
                made_from = (None if self.record is None else
                             {**self.record, "size": [rgb.shape[1], rgb.shape[0]]})
                write_atomic(self.frames[-1],
                             png_bytes(result.labels, mask_text(result, made_from)))

    def _open(self, width: int, height: int) -> None:
        self.size = [width, height]
        fourcc = cv2.VideoWriter_fourcc(*"mp4v")
        for kind, partial in self.partials.items():
            self.writers[kind] = cv2.VideoWriter(str(partial), fourcc, self.fps, (width, height))
            if not self.writers[kind].isOpened():  # OpenCV says no more than this
                raise OSError(None, "OpenCV cannot open a video writer there (folder not "
                              "writable, disk full or no mp4v encoder)", str(self.finals[kind]))

    def __exit__(self, kind, error, traceback) -> None:
        for writer in self.writers.values():
            writer.release()
        with writing_outputs_of(self.source):
            try:
                if self.keep and error is None:
                    for name, partial in self.partials.items():  # all, before any is renamed
                        _check_video(partial, self.written, self.finals[name])
                    if self.record is not None and self.scheme is not None:
                        made_from = {**self.record, "size": self.size}
                        write_atomic(self.record_file,
                                     record_file_text(made_from, self.scheme).encode())
                    for name, partial in self.partials.items():
                        os.replace(partial, self.finals[name])
            finally:  # what was not renamed: an unfinished video, or one that failed
                for partial in self.partials.values():
                    partial.unlink(missing_ok=True)
            if error is None and not self.keep:
                for frame in self.frames:
                    frame.unlink(missing_ok=True)
            if self.frames_dir is not None and not any(self.frames_dir.iterdir()):
                self.frames_dir.rmdir()  # no empty <stem>_frames for a video that gave nothing


def _frame_count(path: Path, expected: int) -> int | None:
    """The frames of the video at ``path``; ``None`` when OpenCV cannot open it.

    The container's count (CAP_PROP_FRAME_COUNT, one open) is exact for the mp4v files
    OpenCV writes (checked for 1-101 frames at 1-60 fps); only when it is not ``expected``
    are the frames read and counted, so an approximate count never fails a good video.
    """
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            return None
        found = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if found != expected:
            found = 0
            while capture.grab():
                found += 1
        return found
    finally:
        capture.release()


def _check_video(partial: Path, frames: int, final: Path) -> None:
    """An OSError naming ``final`` unless ``partial`` reads back with its ``frames``."""
    if not partial.is_file() or partial.stat().st_size == 0:
        problem = "the video is missing or empty once written"
    else:
        found = _frame_count(partial, frames)
        if found == frames:
            return
        problem = ("OpenCV cannot read back the video it wrote" if found is None else
                   f"the video holds {found} of the {frames} frames written")
    raise OSError(None, f"{problem} (disk full or a file system error while writing?)",
                  str(final))


def predict_video(parser, path: Path, out_stem: Path, smoothing: float = 0.0,
                  save_frames: bool = True, alpha: float = 0.5, overwrite: bool = False,
                  record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Parse every frame of ``path``; writes ``<stem>_overlay.mp4``, ``<stem>_mask.mp4``
    and (``save_frames``) ``<stem>_frames/<n>_mask.png``, which hold the scheme, class
    names and ``record`` (what made them) as photo masks do; given a ``record``,
    ``<stem>_video.json`` holds it too (with or without frames). A video whose overlay exists
    is skipped unless ``overwrite`` (``skipped`` in the report). Returns frames, seconds, the
    flicker with and without smoothing and, with crop=faces, the numbers of the frames
    without a face (``frames_without_face``; all background) and how many frames kept a
    missed face's last box (``frames_face_held``). When no frame has a face, nothing is
    kept and ``frames_without_face`` lists every frame.

    Raises :class:`BadSampleError` naming the file when it is not a readable video (a
    folder run reports it and goes on), :class:`OutputWriteError` naming the output and
    the video when a write fails or a finished video does not read back with every frame
    (the videos of an unfinished run are removed, so a rerun parses it again).
    """
    smoothing = check_smoothing(smoothing)
    if parser.crop == "box":
        raise ValueError(NO_BOXES_FOR_VIDEO)
    capture = _open(path)
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    over_path = out_stem.with_name(f"{out_stem.name}_overlay.mp4")
    if over_path.exists() and not overwrite:
        capture.release()
        log.info("skipped %s: %s exists (overwrite=true to redo)", path, over_path)
        return {"frames": 0, "seconds": 0.0, "model_seconds": 0.0, "flicker_raw": None,
                "flicker_smoothed": None, "frames_without_face": [], "frames_face_held": 0,
                "skipped": True}
    outputs = _Outputs(path, out_stem, fps, save_frames, alpha, record, parser.scheme.name)
    state = box = raw_prev = smooth_prev = None
    raw_changes, smooth_changes = [], []
    count, start, model_seconds = 0, time.perf_counter(), 0.0
    hold, missed, held, faceless = max(1, round(fps * HOLD_SECONDS)), 0, 0, []
    with outputs, Progress(transient=True) as progress:
        task = progress.add_task(f"parsing {path.name}", total=total)
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            height, width = rgb.shape[:2]
            region = rgb
            if parser.crop == "faces":
                found = parser.boxes_for(rgb, None)
                missed = 0 if found else missed + 1
                if found:
                    box = _smooth_box(box, found[0], smoothing)
                elif box is not None and missed <= hold:
                    held += 1  # a face missed for a moment keeps its last box
                else:
                    box = None
                if box is None:  # no face: not parsed, all background, smoothing restarts
                    faceless.append(count)
                    state = raw_prev = smooth_prev = None
                    region = None
                else:
                    region = rgb[box[1]:box[3], box[0]:box[2]]
            if region is None:
                result = parser.paste((height, width), [], [])
            else:
                model_start = time.perf_counter()
                logits = parser.photo_logits([region])[0]
                model_seconds += time.perf_counter() - model_start
                state = logits if state is None or state.shape != logits.shape else (
                    smoothing * state + (1 - smoothing) * logits)
                raw, smooth = logits.argmax(0), state.argmax(0)
                for changes, prev, now in ((raw_changes, raw_prev, raw),
                                           (smooth_changes, smooth_prev, smooth)):
                    value = flicker(prev, now)
                    if value is not None:
                        changes.append(value)
                raw_prev, smooth_prev = raw, smooth
                if parser.crop == "faces":
                    result = parser.paste((height, width), [box], [state])
                else:
                    result = parser.finish(state, (height, width), False)
            outputs.write(count, rgb, result)
            count += 1
            progress.advance(task)
        outputs.keep = count > len(faceless)  # nothing of a video without any face is kept
    capture.release()
    if count == 0:
        raise BadSampleError(f"{path}: the video has no readable frames (empty or "
                             f"truncated?)")
    report = {"frames": count, "seconds": time.perf_counter() - start,
              "model_seconds": model_seconds,
              "flicker_raw": float(np.mean(raw_changes)) if raw_changes else None,
              "flicker_smoothed": float(np.mean(smooth_changes)) if smooth_changes else None,
              "frames_without_face": faceless, "frames_face_held": held, "skipped": False}
    held_note = f", {held} kept a missed face's last box" if held else ""
    log.info("%s: %d frames%s, flicker %.4f raw, %.4f with smoothing=%s", path, count,
             held_note, report["flicker_raw"] or 0, report["flicker_smoothed"] or 0, smoothing)
    return report
