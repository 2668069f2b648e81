"""Videos through a parser: per-frame masks, a mask video, an overlay video, flicker.

Frame-by-frame parsing flickers at class borders. ``smoothing`` keeps an exponential
moving average of the model-resolution logits (``s = smoothing * s + (1 - smoothing) *
new``); with ``crop=faces`` every face found in a frame is parsed and pasted back, as in a
photo, and each face's box and logits are averaged over its own frames
(:mod:`faceparse.inference.face_tracks`). Flicker is the share
of pixels whose label changes between consecutive frames, measured at model resolution
with and without the smoothing on the same frames, so the report shows what it buys.

The mask and overlay videos are written at a constant frame rate, the input's: a video
with a variable frame rate (phones record one) gets a warning saying how far the outputs'
timing drifts, and ``<stem>_video.json`` lists every frame's time in the input. Matroska,
WebM and AVI headers give a nominal rate, not the average: there the rate and the frame
count come from the video packets' times (read with PyAV, not decoded), so the outputs last
as long as the input. A video that ends before the frames its header declares (a damaged
frame stops the decoder, a cut file) gets a warning naming both counts, also recorded
there. The input's sound is copied into both videos (with PyAV;
:mod:`faceparse.inference.video_audio`), and the record says whether it was.

With ``crop=faces`` every frame is still written, so the mask video keeps the input's
frame count and ``<stem>_frames/<n>_mask.png`` has no gaps. A face the detector
misses for up to :data:`HOLD_SECONDS` keeps its last box (the LBP cascade drops single
frames of a face that is there); a frame with no face, held or found, is not parsed: its mask
is all background and its number is reported (``frames_without_face``), and the smoothing
starts afresh at the next face. A video with no face in any frame is like a photo without
one: nothing of it is kept. ``crop=box`` has no boxes for video frames and is refused.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from rich.progress import Progress

from faceparse.data.io import BadSampleError
from faceparse.inference.face_tracks import FaceTrack, FaceTracks
from faceparse.inference.video_audio import audio_copier_missing
from faceparse.inference.video_outputs import VideoOutputs, video_paths

log = logging.getLogger(__name__)

__all__ = ["HOLD_SECONDS", "MIN_FPS", "NO_BOXES_FOR_VIDEO", "check_smoothing", "flicker",
           "frame_ranges", "packet_timing", "predict_video", "stream_timing", "timing_details",
           "writer_fps"]

HOLD_SECONDS = 0.5  # crop=faces: a face missed for up to this long keeps its last box
MIN_FPS = 0.01  # OpenCV's mp4v writer refuses slower rates (0.001 fails to open)
# containers (PyAV's format names) whose header gives a nominal frame rate, so OpenCV's fps
# and frame count (duration x that rate) are wrong for a variable rate; mp4/mov give the average
NOMINAL_RATE_FORMATS = frozenset({"matroska", "webm", "avi"})
SAME_RATE = 0.01  # an average this close to the header's rate keeps it (exact: 30000/1001)
CUT_INTERVALS = 2  # a declared end later than the last packet's by more: a cut file
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
    over_path = video_paths(out_stem)["overlay"]
    if over_path.exists() and not overwrite:
        capture.release()
        log.info("skipped %s: %s exists (overwrite=true to redo)", path, over_path)
        return {"frames": 0, "seconds": 0.0, "model_seconds": 0.0, "flicker_raw": None,
                "flicker_smoothed": None, "frames_without_face": [], "frames_face_held": 0,
                "skipped": True}
    header_fps, total = stream_timing(path, capture.get(cv2.CAP_PROP_FPS),
                                      int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None)
    fps = writer_fps(header_fps, path)
    outputs = VideoOutputs(path, out_stem, fps, save_frames, alpha, record, parser.scheme.name)
    whole = FaceTrack((0, 0, 0, 0))  # crop=none: the frame is the one region
    tracks = FaceTracks(smoothing, max(1, round(fps * HOLD_SECONDS)))
    raw_changes, smooth_changes, times = [], [], []
    count, start, model_seconds = 0, time.perf_counter(), 0.0
    held, faceless = 0, []
    try:
        with outputs, Progress(transient=True) as progress:
            task = progress.add_task(f"parsing {path.name}", total=total)
            while True:
                ok, bgr = capture.read()
                if not ok:
                    break
                times.append(float(capture.get(cv2.CAP_PROP_POS_MSEC)))
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                height, width = rgb.shape[:2]
                if min(height, width) < 2:  # the mp4v writer takes even sizes from 2x2
                    raise BadSampleError(f"{path}: its frames are {width}x{height} px, too "
                                         f"small for a video: give frames of 2x2 px or more")
                regions = [whole]
                if parser.crop == "faces":
                    held += tracks.update(parser.boxes_for(rgb, None))
                    regions = tracks.tracks
                    if not regions:  # no face: not parsed, all background, smoothing restarts
                        faceless.append(count)
                model_start = time.perf_counter()
                result = _parse_frame(parser, rgb, regions, whole, smoothing,
                                      (raw_changes, smooth_changes))
                model_seconds += time.perf_counter() - model_start
                outputs.write(count, rgb, result)
                count += 1
                progress.advance(task)
            if count == 0:  # raised inside: its earlier outputs, if any, stay as they are
                raise BadSampleError(f"{path}: the video has no readable frames (empty or "
                                     f"truncated?)")
            outputs.keep = count > len(faceless)  # nothing of a video without any face is kept
            outputs.details = timing_details(path, fps, times, total)
    finally:
        capture.release()
    report = {"frames": count, "seconds": time.perf_counter() - start,
              "model_seconds": model_seconds,
              "flicker_raw": float(np.mean(raw_changes)) if raw_changes else None,
              "flicker_smoothed": float(np.mean(smooth_changes)) if smooth_changes else None,
              "frames_without_face": faceless, "frames_face_held": held, "skipped": False,
              **{k: v for k, v in outputs.details.items() if k != "frame_times_ms"}}
    held_note = f", {held} kept a missed face's last box" if held else ""
    log.info("%s: %d frames%s, flicker %s raw, %s with smoothing=%s", path, count, held_note,
             _share(report["flicker_raw"]), _share(report["flicker_smoothed"]), smoothing)
    return report


def _parse_frame(parser, rgb: np.ndarray, regions: list[FaceTrack], whole: FaceTrack,
                 smoothing: float, changes: tuple[list[float], list[float]]):
    """One frame's result: each region parsed, its logits smoothed over its track, pasted
    back (crop=faces) or finished; the flicker of each region appended to ``changes``
    (raw, smoothed). No region (no face): all background."""
    height, width = rgb.shape[:2]
    crops = [rgb if r is whole else rgb[r.box[1]:r.box[3], r.box[0]:r.box[2]]
             for r in regions]
    logits = parser.photo_logits(crops) if crops else []
    states = []
    for region, region_logits in zip(regions, logits, strict=True):
        states.append(region.smooth(region_logits, smoothing))
        raw, smooth = region_logits.argmax(0), states[-1].argmax(0)
        for found, prev, now in ((changes[0], region.raw_prev, raw),
                                 (changes[1], region.smooth_prev, smooth)):
            value = flicker(prev, now)
            if value is not None:
                found.append(value)
        region.raw_prev, region.smooth_prev = raw, smooth
    if parser.crop == "faces":
        return parser.paste((height, width), [r.box for r in regions], states)
    return parser.finish(states[0], (height, width), False)


def _share(value: float | None) -> str:
    """A flicker for the log: undefined for a one-frame video."""
    return "n/a" if value is None else f"{value:.4f}"


def stream_timing(path: Path, header_fps: float, header_frames: int | None
                  ) -> tuple[float, int | None]:
    """The frame rate to write at and the frames to expect, OpenCV's (``header_*``) unless
    the container's header gives a nominal rate (:data:`NOMINAL_RATE_FORMATS`): then its
    video packets' times give the average rate (so the outputs, and the sound cut at their
    end, last as long as the input) and their count (no false "cut file" warning). Without
    PyAV, or for a file it cannot read, OpenCV's stay: the parse never fails for this."""
    if audio_copier_missing():
        return header_fps, header_frames
    import av

    try:
        packets = _video_packets(path)
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as error:
        log.debug("%s: PyAV cannot read its packets (%s): OpenCV's timing", path, error)
        return header_fps, header_frames
    if packets is None or not packets[0]:
        return header_fps, header_frames
    return packet_timing(header_fps, *packets)


def packet_timing(header_fps: float, times: list[float], durations: list[float],
                  declared_end: float | None) -> tuple[float, int]:
    """Rate and frame count of packets starting at ``times`` (s) and lasting ``durations``
    (0: unknown, then the end the header declares when it is near, else the typical
    interval): the header's rate when the average is within :data:`SAME_RATE` of it; a
    ``declared_end`` well after the last packet (a cut file) adds the frames that would
    fill the gap, so the cut is still a warning."""
    order = sorted(range(len(times)), key=times.__getitem__)
    gaps = [b - a for a, b in zip(sorted(times), sorted(times)[1:], strict=False) if b > a]
    typical = float(np.median(gaps)) if gaps else 0.0
    last = durations[order[-1]] or typical
    end = times[order[-1]] + last
    if not durations[order[-1]] and declared_end and (
            times[order[-1]] < declared_end <= end + CUT_INTERVALS * typical):
        end = declared_end  # AVI: no packet durations, the header's length is the end
    span = end - times[order[0]]
    if span <= 0:  # one frame of unknown length: no average to take
        return header_fps, len(times)
    average = len(times) / span
    same = math.isfinite(header_fps) and abs(average - header_fps) <= SAME_RATE * header_fps
    fps = header_fps if same else average
    missing = (declared_end or 0.0) - end
    extra = round(missing * fps) if missing > CUT_INTERVALS / fps else 0
    return fps, len(times) + extra


def _video_packets(path: Path) -> tuple[list[float], list[float], float | None] | None:
    """The first video stream's packets' start times and durations (s; demuxed, not
    decoded) and the end its container declares; None where the header rate is the
    average already."""
    import av

    with av.open(str(path)) as container:
        names = set(container.format.name.split(","))
        if not names & NOMINAL_RATE_FORMATS or not container.streams.video:
            return None
        stream = container.streams.video[0]
        times, durations = [], []
        for packet in container.demux(stream):
            at = packet.pts if packet.pts is not None else packet.dts
            if packet.size and at is not None and packet.time_base is not None:
                times.append(float(at * packet.time_base))
                durations.append(float((packet.duration or 0) * packet.time_base))
        return times, durations, _declared_end(container, stream)


def _declared_end(container: Any, stream: Any) -> float | None:
    """When the video's header says it ends (s): Matroska's track ``DURATION`` tag (kept
    in a cut file), the stream's duration, or a lone stream's container duration (with
    sound, that may be the sound's end)."""
    tag = stream.metadata.get("DURATION", "")
    try:
        hours, minutes, seconds = tag.split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        pass
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and len(container.streams) == 1:
        return container.duration / 1_000_000  # av.time_base
    return None


def writer_fps(header_fps: float, path: Path) -> float:
    """The frame rate to write at: the header's, when the writer can take it."""
    if not math.isfinite(header_fps) or header_fps <= 0:
        log.warning("%s: no frame rate in its header: its outputs are written at 25 fps",
                    path)
        return 25.0
    if header_fps < MIN_FPS:
        log.warning("%s: its header says %g fps, slower than the video writer takes: its "
                    "outputs are written at %g fps", path, header_fps, MIN_FPS)
        return MIN_FPS
    return float(header_fps)


def timing_details(path: Path, fps: float, times: list[float], declared: int | None
                   ) -> dict[str, Any]:
    """What ``<stem>_video.json`` records of the timing beside what made the outputs: the
    frames and fps written; with a warning each, the frames the header declared but the
    decoder never gave, and every frame's time in the input when its rate varies."""
    details: dict[str, Any] = {"frames": len(times), "fps": fps}
    if declared and len(times) < declared - 1:  # some containers' count is off by one
        log.warning("%s: decoded %d of the %d frames its header declares (a damaged frame "
                    "or a cut file?): its outputs hold those %d frames", path, len(times),
                    declared, len(times))
        details["declared_frames"] = declared
    interval = 1000.0 / fps
    drift = max((abs(t - times[0] - n * interval) for n, t in enumerate(times)), default=0.0)
    # some backends give no times (all 0) or unordered ones: nothing to tell from them
    timed = len(times) > 1 and all(b > a for a, b in zip(times, times[1:], strict=False))
    if timed and drift > interval / 2:
        log.warning("%s: variable frame rate: its outputs are written at a constant %.3g fps, "
                    "so their frames drift up to %.2f s from the input's times (listed in "
                    "<stem>_video.json as frame_times_ms)", path, fps, drift / 1000)
        details["frame_times_ms"] = [round(t, 3) for t in times]
    return details
