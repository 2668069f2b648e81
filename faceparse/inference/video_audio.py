"""The input's sound in the output videos: OpenCV writes pictures only.

The audio packets are copied as they are (no re-encoding, so no quality loss) into a copy
of each finished video, with PyAV (``pip install av``, in the ``video`` extra); a sound
format players do not read from mp4 (PCM from an AVI, Vorbis) is re-encoded to AAC. The sound is
shifted by the input's video start time, since the output's first frame is at 0, and cut
at the output's last frame. Without PyAV, or with a sound PyAV cannot read, the videos stay
silent and the reason is said and recorded: a parse never fails for its sound.
"""

from __future__ import annotations

import heapq
import importlib.util
import logging
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

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
    """Write ``video`` with ``source``'s first audio stream to ``out``, as mp4.

    Returns what was done, for the record: ``"copied"``, ``"re-encoded to AAC"`` or
    :data:`NO_AUDIO` (then ``out`` is not written); raises ``ValueError`` with the reason
    the sound could not be added (PyAV missing, a stream it cannot read).
    """
    missing = audio_copier_missing()
    if missing:
        raise ValueError(missing)
    import av

    try:
        with av.open(str(source)) as src:
            if not src.streams.audio:
                return NO_AUDIO
            codec = src.streams.audio[0].codec_context.codec.canonical_name
        if codec in MP4_SOUND:
            try:
                _mux(source, video, out, reencode=False)
                return "copied"
            except (av.error.FFmpegError, ValueError):  # a stream the muxer does not take
                out.unlink(missing_ok=True)
        _mux(source, video, out, reencode=True)
        return "re-encoded to AAC"
    except (av.error.FFmpegError, ValueError) as error:
        out.unlink(missing_ok=True)
        raise ValueError(f"{type(error).__name__}: {error}") from None


def _mux(source: Path, video: Path, out: Path, reencode: bool) -> None:
    """``video``'s pictures and ``source``'s sound, in time order, into ``out``."""
    import av

    with av.open(str(source)) as src, av.open(str(video)) as pictures, \
            av.open(str(out), "w", format="mp4") as dst:
        audio = src.streams.audio[0]
        frames = pictures.streams.video[0]
        end = _end_seconds(frames)
        out_frames = dst.add_stream_from_template(frames)
        shift = _start(src.streams.video[0]) if src.streams.video else 0.0
        if reencode:  # the encoder counts from 0: the sound's own start is kept by the shift
            layout = "mono" if audio.codec_context.channels == 1 else "stereo"  # AAC's own
            out_audio = dst.add_stream("aac", rate=audio.codec_context.sample_rate,
                                       layout=layout)
            sound = _encoded(src.decode(audio), out_audio)
            shift -= _start(audio)
        else:
            out_audio = dst.add_stream_from_template(audio)
            sound = src.demux(audio)
        packets = heapq.merge(_timed(pictures.demux(frames), 0.0, out_frames),
                              _timed(sound, shift, out_audio), key=lambda timed: timed[0])
        for seconds, packet in packets:
            if packet.stream is out_audio and end is not None and seconds >= end:
                continue  # sound after the last frame (the input stopped early)
            dst.mux(packet)


def _encoded(frames: Iterator[Any], stream: Any) -> Iterator[Any]:
    """Decoded sound encoded for ``stream`` (PyAV resamples to the encoder's format), timed
    by its samples from 0 (:func:`_mux` shifts it by the sound's start)."""
    samples = 0
    for frame in frames:
        frame.pts, frame.time_base = samples, Fraction(1, frame.sample_rate)
        samples += frame.samples
        yield from stream.encode(frame)
    yield from stream.encode(None)


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
