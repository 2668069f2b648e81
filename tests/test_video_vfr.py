"""Matroska/WebM (and AVI) headers give a nominal frame rate, not the average: a variable
rate input is written at its frames' average rate, so the outputs (and the sound cut at
their end) last as long as the input, and an intact file is no "cut file" warning."""

from __future__ import annotations

import json
import logging
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
from predict_helpers import predict_config

from faceparse.inference import video
from faceparse.predict import predict

av = pytest.importorskip("av")  # the video extra, installed by .[dev]
pytestmark = pytest.mark.usefixtures("torch_single_thread")
VFR_MS = [0, 100, 200, 300, 700, 800, 900, 1300, 1400, 1500]  # a phone's stalls: 1.6 s
AVERAGE = len(VFR_MS) / 1.6  # frames over the span, the last frame lasting 100 ms: 6.25
RATE = 16000


def write_mkv(path: Path, times_ms: list[int], rate: Fraction = Fraction(10),
              seconds_of_sound: float = 0.0) -> None:
    """An mpeg4 .mkv whose frames start at ``times_ms`` (header rate ``rate``), with
    ``seconds_of_sound`` of an AAC tone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="matroska") as out:
        picture = out.add_stream("mpeg4", rate=rate)
        picture.width, picture.height, picture.pix_fmt = 48, 32, "yuv420p"
        picture.codec_context.time_base = Fraction(1, 1000)
        sound = out.add_stream("aac", rate=RATE, layout="mono") if seconds_of_sound else None
        rng = np.random.default_rng(0)
        for at in times_ms:
            frame = av.VideoFrame.from_ndarray(
                rng.integers(0, 256, (32, 48, 3), dtype=np.uint8), format="rgb24")
            frame.pts, frame.time_base = at, Fraction(1, 1000)
            for packet in picture.encode(frame):
                out.mux(packet)
        if sound is not None:
            tone = 0.3 * np.sin(np.arange(int(seconds_of_sound * RATE)) / RATE * 2 * np.pi * 440)
            frame = av.AudioFrame.from_ndarray(tone.astype(np.float32)[None], format="fltp",
                                               layout="mono")
            frame.sample_rate = RATE
            for packet in [*sound.encode(frame), *sound.encode(None)]:
                out.mux(packet)
        for packet in picture.encode(None):
            out.mux(packet)


def parse(compose, ckpt: Path, tmp_path: Path, source: Path) -> tuple[dict, dict, Path]:
    out = tmp_path / "out"
    result = predict(predict_config(compose, tmp_path, ckpt, f"input={source}",
                                    f"output_dir={out}", "save_frames=false"))
    assert result["failed"] == 0
    return result, json.loads((out / f"{source.stem}_video.json").read_text()), out


def overlay_timing(path: Path) -> tuple[float, int, float | None]:
    """The overlay's fps and frames (OpenCV), and when its sound ends (s; None: silent)."""
    capture = cv2.VideoCapture(str(path))
    fps, frames = capture.get(cv2.CAP_PROP_FPS), int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return fps, frames, None
        ends = [float((p.pts + p.duration) * p.time_base)
                for p in container.demux(container.streams.audio[0]) if p.size]
    return fps, frames, max(ends)


def test_a_variable_rate_mkv_is_written_at_its_average_rate_with_all_its_sound(
        compose, ckpt, tmp_path, caplog):
    source = tmp_path / "in" / "vfr.mkv"
    write_mkv(source, VFR_MS, seconds_of_sound=1.6)
    with caplog.at_level(logging.WARNING):
        result, record, out = parse(compose, ckpt, tmp_path, source)
    assert result["images"] == len(VFR_MS)
    assert "its header declares" not in caplog.text and "declared_frames" not in record
    assert record["fps"] == pytest.approx(AVERAGE)
    assert "variable frame rate" in caplog.text and record["frame_times_ms"] == VFR_MS
    fps, frames, sound_end = overlay_timing(out / "vfr_overlay.mp4")
    assert (fps, frames) == (pytest.approx(AVERAGE), len(VFR_MS))  # 1.6 s, as the input
    assert sound_end == pytest.approx(1.6, abs=0.07)  # not cut at 1.0 s


def test_a_constant_rate_mkv_keeps_its_exact_header_rate(compose, ckpt, tmp_path, caplog):
    source = tmp_path / "in" / "ntsc.mkv"
    write_mkv(source, [round(n * 1001 / 30) for n in range(6)], rate=Fraction(30000, 1001))
    with caplog.at_level(logging.WARNING):
        _, record, _ = parse(compose, ckpt, tmp_path, source)
    assert record["fps"] == pytest.approx(30000 / 1001, rel=1e-12)  # not 1 ms rounding's
    assert "frame_times_ms" not in record and "declared_frames" not in record
    assert "its header declares" not in caplog.text


def test_a_cut_mkv_is_still_a_declared_frames_warning(compose, ckpt, tmp_path, caplog):
    whole = tmp_path / "whole.mkv"
    write_mkv(whole, VFR_MS)
    with av.open(str(whole)) as container:  # cut where the 7th frame's packet begins
        cut_at = [p.pos for p in container.demux(container.streams.video[0]) if p.size][6]
    source = tmp_path / "in" / "cut.mkv"
    source.parent.mkdir()
    source.write_bytes(whole.read_bytes()[:cut_at])
    with caplog.at_level(logging.WARNING):
        result, record, _ = parse(compose, ckpt, tmp_path, source)
    assert result["images"] == record["frames"] < record["declared_frames"]
    assert f"decoded {record['frames']} of the {record['declared_frames']} frames its " \
           f"header declares" in caplog.text


def test_the_average_rate_and_count_come_from_the_packets(tmp_path):
    source = tmp_path / "vfr.mkv"
    write_mkv(source, VFR_MS)
    assert video.stream_timing(source, 10.0, 16) == (pytest.approx(AVERAGE), len(VFR_MS))
    starts = [n / 10 for n in range(9)]  # 10 fps for 0.9 s
    # within 1% of the header's rate: the header's; a frame short of the end is no cut file
    assert video.packet_timing(9.95, starts, [0.1] * 9, 1.0) == (9.95, 9)
    # no durations: the last frame lasts the typical interval; 0.6 s short: a cut file
    assert video.packet_timing(25.0, starts, [0.0] * 9, 1.5) == (pytest.approx(10.0), 15)
    # AVI: no durations, the header's length near the last frame is the end (1.6 s here)
    avi = [0, 0.1, 0.2, 0.3, 0.7, 0.8, 0.9, 1.3, 1.4, 1.5]
    assert video.packet_timing(1000.0, avi, [0.0] * 10, 1.6) == (pytest.approx(6.25), 10)


def test_without_pyav_or_for_an_unreadable_or_mp4_file_opencvs_timing_stays(
        tmp_path, monkeypatch):
    junk = tmp_path / "junk.mkv"
    junk.write_bytes(b"\x1a\x45\xdf\xa3" + b"not a matroska file" * 8)
    assert video.stream_timing(junk, 10.0, 17) == (10.0, 17)
    mp4 = tmp_path / "vfr.mp4"  # mp4's header rate is the average already: OpenCV's stays
    with av.open(str(mp4), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for at in VFR_MS:
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 48, 3), np.uint8), format="rgb24")
            frame.pts, frame.time_base = at, Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    assert video.stream_timing(mp4, 7.0, 3) == (7.0, 3)
    source = tmp_path / "vfr.mkv"
    write_mkv(source, VFR_MS)
    monkeypatch.setattr(video, "audio_copier_missing", lambda: "PyAV is not installed")
    assert video.stream_timing(source, 10.0, 16) == (10.0, 16)
