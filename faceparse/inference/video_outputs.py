"""A video's output files: the mask and overlay videos, the frame masks and the record.

OpenCV's ``VideoWriter.write`` fails silently (disk full, a file system error mid-run), so
a finished video is renamed into place only once it reads back with every frame written.
OpenCV writes pictures only: the input's sound is added to a finished video afterwards
(:mod:`faceparse.inference.video_audio`).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from faceparse.data.io import write_atomic
from faceparse.inference.outputs import mask_text, overlay, png_bytes, writing_outputs_of
from faceparse.inference.provenance import record_file_text
from faceparse.inference.video_audio import NO_AUDIO, audio_copier_missing, copy_audio

__all__ = ["VideoOutputs", "frame_mask_name", "frame_masks", "video_paths"]

log = logging.getLogger(__name__)
_FRAME_MASK = re.compile(r"\d{6,}_mask\.png")


def video_paths(out_stem: Path) -> dict[str, Path]:
    """A video's output files by kind: ``mask`` and ``overlay`` (the videos), ``frames``
    (the folder of frame masks), ``record`` (``<stem>_video.json``)."""
    name = out_stem.name
    return {"mask": out_stem.with_name(f"{name}_mask.mp4"),
            "overlay": out_stem.with_name(f"{name}_overlay.mp4"),
            "frames": out_stem.with_name(f"{name}_frames"),
            "record": out_stem.with_name(f"{name}_video.json")}


class VideoOutputs:
    """One video's files, replaced as one: ``<stem>_overlay.mp4`` and ``<stem>_mask.mp4``,
    written under hidden partial names, ``<stem>_frames/<n>_mask.png`` (``save_frames``),
    written into a hidden partial folder, and, given a ``record``, ``<stem>_video.json``:
    what made them, which a rerun judges with or without frame masks.

    As a context manager: on leaving, the finished outputs replace the earlier ones if
    ``keep``; the earlier overlay, which a rerun takes as the sign of a finished video, goes
    first and the new one comes last, so a run stopped in between is parsed again, never
    kept as a mix of two runs; frame masks of the earlier run go too (a shorter video,
    ``save_frames=false`` now). Not ``keep`` (no face in any frame): the earlier outputs go,
    with a warning, as a photo's do. After an error nothing is replaced and the partial
    files go. A failed write is an :class:`OutputWriteError` naming the file and the video;
    so is a video that does not read back with every frame written, since OpenCV's
    ``VideoWriter.write`` fails silently (disk full, a file system error mid-run).
    """

    def __init__(self, source: Path, out_stem: Path, fps: float, save_frames: bool,
                 alpha: float, record: dict[str, Any] | None = None,
                 scheme: str | None = None) -> None:
        self.source, self.fps, self.alpha, self.keep = source, fps, alpha, False
        self.record = record  # what made the outputs (see faceparse.inference.provenance)
        self.scheme = scheme  # the label scheme the record file names
        paths = video_paths(out_stem)
        self.record_file = paths["record"]
        self.size: list[int] = []  # (width, height) of the frames
        self.details: dict[str, Any] = {}  # frames and timing, for the record file
        self.finals = {kind: paths[kind] for kind in ("mask", "overlay")}  # overlay last
        self.partials = {kind: path.with_name(f".{path.stem}.partial.mp4")
                         for kind, path in self.finals.items()}
        self.frames_final = paths["frames"]
        partial_frames = paths["frames"].with_name(f".{paths['frames'].name}.partial")
        self.frames_dir = partial_frames if save_frames else None
        self.writers: dict[str, cv2.VideoWriter] = {}
        self.written = 0  # frames handed to each video writer
        with writing_outputs_of(source):
            out_stem.parent.mkdir(parents=True, exist_ok=True)
            _remove_frame_masks(partial_frames)  # of a run killed before cleaning up
            if self.frames_dir is not None:
                if self.frames_final.exists() and not self.frames_final.is_dir():
                    raise FileExistsError(None, "a file is there, not the folder of frame "
                                          "masks (save_frames=true)", str(self.frames_final))
                self.frames_dir.mkdir(exist_ok=True)

    def __enter__(self) -> VideoOutputs:
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
                made_from = (None if self.record is None else
                             {**self.record, "size": [rgb.shape[1], rgb.shape[0]]})
                name = frame_mask_name(n)
                try:
                    write_atomic(self.frames_dir / name,
                                 png_bytes(result.labels, mask_text(result, made_from)))
                except OSError as error:  # named where the user will look for it
                    raise OSError(error.errno, error.strerror,
                                  str(self.frames_final / name)) from error

    def _open(self, width: int, height: int) -> None:
        self.size = [width, height]
        if width % 2 or height % 2:
            log.warning("%s: its frames are %dx%d px; the mp4v videos hold %dx%d (the codec "
                        "takes even sizes), the frame masks the whole frame", self.source,
                        width, height, width - width % 2, height - height % 2)
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
                    self._replace_earlier()
                elif error is None:
                    self._remove_earlier("which has no face in any frame now")
            finally:  # what was not renamed: an unfinished video, or one that failed
                for partial in self.partials.values():
                    partial.unlink(missing_ok=True)
                    _with_sound(partial).unlink(missing_ok=True)
                if self.frames_dir is not None:
                    _remove_frame_masks(self.frames_dir)

    def _replace_earlier(self) -> None:
        """The finished outputs in place of the earlier ones, the overlay out first and in
        last (see the class)."""
        for name, partial in self.partials.items():  # all, before any is renamed
            _check_video(partial, self.written, self.finals[name])
        self.details["audio"] = self._add_sound()
        self.finals["overlay"].unlink(missing_ok=True)
        if self.record is not None and self.scheme is not None:
            made_from = {**self.record, "size": self.size}
            write_atomic(self.record_file, record_file_text(
                made_from, self.scheme, self.details).encode())
        else:  # nothing says what made the new videos: not the earlier record either
            self.record_file.unlink(missing_ok=True)
        os.replace(self.partials["mask"], self.finals["mask"])
        earlier = _remove_frame_masks(self.frames_final)
        if self.frames_dir is not None:
            if self.frames_final.exists():  # it holds files of the user's: they stay
                for frame in frame_masks(self.frames_dir):
                    os.replace(frame, self.frames_final / frame.name)
            else:
                os.replace(self.frames_dir, self.frames_final)
        elif earlier:
            log.warning("removed %d frame masks of %s's earlier outputs from %s: "
                        "save_frames=false wrote none for its new videos", earlier,
                        self.source, self.frames_final)
        os.replace(self.partials["overlay"], self.finals["overlay"])

    def _remove_earlier(self, why: str) -> None:
        """The earlier outputs go, with a warning: they are not this run's result."""
        files = [p for p in (self.finals["overlay"], self.finals["mask"], self.record_file)
                 if p.is_file()]
        for path in files:
            path.unlink()
        frames = _remove_frame_masks(self.frames_final)
        named = [p.name for p in files] + ([f"{frames} frame masks in "
                                            f"{self.frames_final.name}/"] if frames else [])
        if named:
            log.warning("removed %s: the earlier outputs of %s, %s", ", ".join(named),
                        self.source, why)

    def _add_sound(self) -> str:
        """The input's sound into both finished videos; what was done, for the record. A
        sound that cannot be added leaves both videos silent, with a warning saying why."""
        outcome = NO_AUDIO
        try:
            for name, partial in self.partials.items():  # both, before either is replaced
                outcome = copy_audio(self.source, partial, _with_sound(partial))
                if outcome == NO_AUDIO:
                    return outcome
                _check_video(_with_sound(partial), self.written, self.finals[name])
        except Exception as error:  # never a failed parse for its sound
            for partial in self.partials.values():
                _with_sound(partial).unlink(missing_ok=True)
            reason = str(error) if isinstance(error, ValueError) else \
                f"{type(error).__name__}: {error}"
            _warn_silent(self.source, reason)
            return f"not copied: {reason}"
        for partial in self.partials.values():
            os.replace(_with_sound(partial), partial)
        return outcome


def frame_mask_name(n: int) -> str:
    """Frame ``n``'s mask in ``<stem>_frames/``."""
    return f"{n:06d}_mask.png"


def frame_masks(folder: Path) -> list[Path]:
    """The frame masks in ``folder`` (none if it is not there)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _FRAME_MASK.fullmatch(p.name))


def _remove_frame_masks(folder: Path) -> int:
    """Remove ``folder``'s frame masks, and the folder once it holds nothing else; how
    many there were. Files the user put there stay."""
    found = frame_masks(folder)
    for frame in found:
        frame.unlink()
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return len(found)


def _with_sound(partial: Path) -> Path:
    """Where a partial video is written again with the input's sound."""
    return partial.with_name(partial.name.replace(".partial.mp4", ".sound.mp4"))


_said_no_copier = False  # PyAV missing: said once per run, recorded for every video


def _warn_silent(source: Path, reason: str) -> None:
    global _said_no_copier
    if audio_copier_missing():
        if not _said_no_copier:
            log.warning("the output videos have no sound, the inputs' sound (if any) is not "
                        "copied: %s", reason)
        _said_no_copier = True
        return
    log.warning("%s: its sound is not copied into the output videos, which stay silent (%s)",
                source, reason)


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
