"""The input's sound in the output videos: OpenCV writes pictures only.

The default audio track's packets are copied as they are (no re-encoding, so no quality
loss) into a copy of each finished video, with PyAV (``pip install av``, in the ``video``
extra); a sound format players do not read from mp4 (PCM from an AVI, Vorbis) is
re-encoded to AAC, its gaps kept as silence. The sound is shifted by the input's video
start time, since the output's first frame is at 0, and cut at the output's last frame.
Without PyAV, or with a sound PyAV cannot read, the videos stay silent and the reason is
said and recorded: a parse never fails for its sound.
"""

from __future__ import annotations

import heapq
import importlib.util
import logging
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["AUDIO_HINT", "NO_AUDIO", "audio_copier_missing", "copy_audio"]

log = logging.getLogger(__name__)

AUDIO_HINT = "pip install av (the video extra: pip install -e '.[video]')"
# sound formats players read from mp4 (FFmpeg also muxes PCM there, which most do not play)
MP4_SOUND = frozenset({"aac", "mp3", "opus", "ac3", "eac3", "alac"})
NO_AUDIO = "none in the input"


def audio_copier_missing() -> str | None:
    """Why sound cannot be copied here (PyAV not installed), or None."""
    if importlib.util.find_spec("av") is None:
        return f"PyAV is not installed ({AUDIO_HINT})"
    return None


def copy_audio(source: Path, video: Path, out: Path) -> str:
    """Write ``video`` with ``source``'s sound (its default audio track) to ``out``, as mp4.

    Returns what was done, for the record: ``"copied"`` or ``"re-encoded to AAC"`` (saying
    which track of several, and a downmix), or :data:`NO_AUDIO` (then ``out`` is not
    written); raises ``ValueError`` with the reason the sound could not be added (PyAV
    missing, a stream it cannot read).
    """
    missing = audio_copier_missing()
    if missing:
        raise ValueError(missing)
    import av

    try:
        with av.open(str(source)) as src:
            if not src.streams.audio:
                return NO_AUDIO
            audio = src.streams.best("audio") or src.streams.audio[0]
            context = audio.codec_context
            if context is None or context.codec is None:
                raise ValueError("PyAV has no decoder for its sound")
            track, tracks = list(src.streams.audio).index(audio), len(src.streams.audio)
            codec, channels = context.codec.canonical_name, context.channels
        which = f" (audio track {track + 1} of {tracks}; the others are not)" \
            if tracks > 1 else ""
        if codec in MP4_SOUND:
            try:
                _mux(source, video, out, track, reencode=False)
                return f"copied{which}"
            except (av.error.FFmpegError, ValueError):  # a stream the muxer does not take
                out.unlink(missing_ok=True)
        layout = _mux(source, video, out, track, reencode=True)
        downmix = f", downmixed from {channels} channels" if channels > 2 and \
            layout == "stereo" else ""
        return f"re-encoded to AAC{downmix}{which}"
    except (av.error.FFmpegError, ValueError) as error:
        out.unlink(missing_ok=True)
        raise ValueError(f"{type(error).__name__}: {error}") from None


# channel layouts FFmpeg's AAC encoder takes; others are downmixed to stereo
AAC_LAYOUTS = frozenset({"mono", "stereo", "3.0", "4.0", "5.0", "5.1", "7.1",
                         "5.0(side)", "5.1(side)"})


def _mux(source: Path, video: Path, out: Path, track: int, reencode: bool) -> str | None:
    """``video``'s pictures and audio ``track`` of ``source``, in time order, into ``out``;
    the channel layout when re-encoded."""
    import av

    with av.open(str(source)) as src, av.open(str(video)) as pictures, \
            av.open(str(out), "w", format="mp4") as dst:
        audio = src.streams.audio[track]
        frames = pictures.streams.video[0]
        end = _end_seconds(frames)
        out_frames = dst.add_stream_from_template(frames)
        shift = _start(src.streams.video[0]) if src.streams.video else 0.0
        layout = None
        if reencode:  # timed from the sound's start: the shift keeps it in place
            context = audio.codec_context
            layout = context.layout.name if context.layout.name in AAC_LAYOUTS else \
                "mono" if context.channels == 1 else "stereo"
            out_audio = dst.add_stream("aac", rate=context.sample_rate, layout=layout)
            sound = _encoded(src.decode(audio), out_audio, _start(audio))
            shift -= _start(audio)
        else:
            out_audio = dst.add_stream_from_template(audio)
            sound = src.demux(audio)
        packets = heapq.merge(_timed(pictures.demux(frames), 0.0, out_frames),
                              _timed(sound, shift, out_audio), key=lambda timed: timed[0])
        for seconds, packet in packets:
            if packet.stream is out_audio and end is not None and seconds >= end:
                break  # sound after the last frame (in time order: no picture is left)
            dst.mux(packet)
        return layout


def _encoded(frames: Iterator[Any], stream: Any, start: float) -> Iterator[Any]:
    """Decoded sound encoded for ``stream`` (PyAV resamples to the encoder's format), timed
    in samples from ``start``: a gap in the input (a paused recorder) is filled with
    silence, so what follows it stays in time with the pictures."""
    samples = 0
    for frame in frames:
        rate = frame.sample_rate
        if frame.pts is not None and frame.time_base is not None:
            due = round((float(frame.pts * frame.time_base) - start) * rate)
            if due > samples:
                yield from stream.encode(_silence(frame, due - samples, samples))
                samples = due
        frame.pts, frame.time_base = samples, Fraction(1, rate)
        samples += frame.samples
        yield from stream.encode(frame)
    yield from stream.encode(None)


def _silence(like: Any, count: int, at: int) -> Any:
    """``count`` samples of silence in ``like``'s format, layout and rate, at sample ``at``."""
    import av

    name = like.format.name
    dtype = SAMPLE_DTYPES[name.removesuffix("p")]
    channels = len(like.layout.channels)
    shape = (channels, count) if like.format.is_planar else (1, count * channels)
    silent = np.full(shape, 128 if dtype == np.uint8 else 0, dtype=dtype)  # u8 is offset
    frame = av.AudioFrame.from_ndarray(silent, format=name, layout=like.layout.name)
    frame.sample_rate, frame.pts, frame.time_base = like.sample_rate, at, \
        Fraction(1, like.sample_rate)
    return frame


# FFmpeg's sample formats (planar ones end in "p") as NumPy types
SAMPLE_DTYPES = {"u8": np.uint8, "s16": np.int16, "s32": np.int32, "s64": np.int64,
                 "flt": np.float32, "dbl": np.float64}


def _start(stream: Any) -> float:
    """A stream's first time in seconds (the input's first picture is the output's 0 s)."""
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def _end_seconds(stream: Any) -> float | None:
    """When the output video's last frame ends."""
    if stream.duration is None or stream.time_base is None:
        return None
    return float(stream.duration * stream.time_base)


def _timed(packets: Iterator[Any], shift: float, target: Any) -> Iterator[tuple[float, Any]]:
    """Packets with a time, moved to ``target`` and ``shift`` seconds earlier; the demuxer's
    empty flush packets and sound from before the first picture are left out."""
    for packet in packets:
        if packet.dts is None or packet.pts is None or packet.time_base is None:
            continue
        moved = round(Fraction(shift) / packet.time_base)
        packet.pts, packet.dts = packet.pts - moved, packet.dts - moved
        if packet.pts < 0:
            continue
        packet.stream = target
        yield float(packet.pts * packet.time_base), packet
