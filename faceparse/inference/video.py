"""Videos through a parser: per-frame masks, a mask video, an overlay video, flicker.

Frame-by-frame parsing flickers at class borders. ``smoothing`` keeps an exponential
moving average of the model-resolution logits (``s = smoothing * s + (1 - smoothing) *
new``); with ``crop=faces`` the face boxes are averaged the same way. Flicker is the share
of pixels whose label changes between consecutive frames, measured at model resolution
with and without the smoothing on the same frames, so the report shows what it buys.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from rich.progress import Progress

from faceparse.data.io import BadSampleError, write_atomic
from faceparse.inference.outputs import overlay, png_bytes

log = logging.getLogger(__name__)

__all__ = ["flicker", "predict_video"]


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


def predict_video(parser, path: Path, out_stem: Path, smoothing: float = 0.0,
                  save_frames: bool = True, alpha: float = 0.5, overwrite: bool = False
                  ) -> dict[str, Any]:
    """Parse every frame of ``path``; writes ``<stem>_overlay.mp4``, ``<stem>_mask.mp4``
    and (``save_frames``) ``<stem>_frames/<n>_mask.png``. Returns frames, seconds and the
    flicker with and without smoothing.

    Raises :class:`BadSampleError` naming the file when it is not a readable video (a
    folder run reports it and goes on).
    """
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing={smoothing}: must be in [0, 1)")
    capture = _open(path)
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    over_path = out_stem.with_name(f"{out_stem.name}_overlay.mp4")
    mask_path = out_stem.with_name(f"{out_stem.name}_mask.mp4")
    if over_path.exists() and not overwrite:
        capture.release()
        log.info("skipped %s: %s exists (overwrite=true to redo)", path, over_path)
        return {"frames": 0, "seconds": 0.0, "model_seconds": 0.0, "flicker_raw": None,
                "flicker_smoothed": None}
    frames_dir = out_stem.with_name(f"{out_stem.name}_frames")
    (frames_dir if save_frames else out_stem.parent).mkdir(parents=True, exist_ok=True)
    writers: dict[str, cv2.VideoWriter] = {}
    state = box = raw_prev = smooth_prev = None
    raw_changes, smooth_changes = [], []
    count, start, model_seconds = 0, time.perf_counter(), 0.0
    with Progress(transient=True) as progress:
        task = progress.add_task(f"parsing {path.name}", total=total)
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            height, width = rgb.shape[:2]
            if parser.crop == "faces":
                found = parser.boxes_for(rgb, None)
                box = _smooth_box(box, found[0], smoothing) if found else box
                region = rgb[box[1]:box[3], box[0]:box[2]] if box else rgb
            else:
                region = rgb
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
            if parser.crop == "faces" and box:
                result = parser.paste((height, width), [box], [state])
            else:
                result = parser.finish(state, (height, width), False)
            color = result.color()
            if not writers:
                fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                writers = {name: cv2.VideoWriter(str(p), fourcc, fps, (width, height))
                           for name, p in (("overlay", over_path), ("mask", mask_path))}
            writers["overlay"].write(cv2.cvtColor(overlay(rgb, color, alpha), cv2.COLOR_RGB2BGR))
            writers["mask"].write(cv2.cvtColor(color, cv2.COLOR_RGB2BGR))
            if save_frames:
                write_atomic(frames_dir / f"{count:06d}_mask.png", png_bytes(result.labels))
            count += 1
            progress.advance(task)
    capture.release()
    for writer in writers.values():
        writer.release()
    if count == 0:
        if save_frames and not any(frames_dir.iterdir()):
            frames_dir.rmdir()  # no empty <stem>_frames folder for a video that gave nothing
        raise BadSampleError(f"{path}: the video has no readable frames (empty or "
                             f"truncated?)")
    report = {"frames": count, "seconds": time.perf_counter() - start,
              "model_seconds": model_seconds,
              "flicker_raw": float(np.mean(raw_changes)) if raw_changes else None,
              "flicker_smoothed": float(np.mean(smooth_changes)) if smooth_changes else None}
    log.info("%s: %d frames, flicker %.4f raw, %.4f with smoothing=%s", path, count,
             report["flicker_raw"] or 0, report["flicker_smoothed"] or 0, smoothing)
    return report
