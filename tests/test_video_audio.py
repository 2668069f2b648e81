"""The input's sound in predict's output videos: copied (or re-encoded to AAC where mp4
takes no copy), in time with the pictures, and recorded; a video that cannot get it stays
silent with a warning saying why, never a failed parse."""

from __future__ import annotations

import json
import logging
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from predict_helpers import predict_config

from faceparse.inference import video_audio, video_outputs
from faceparse.predict import predict

av = pytest.importorskip("av")  # the video extra, installed by .[dev]
pytestmark = pytest.mark.usefixtures("torch_single_thread")
RATE, FPS, FRAMES = 16000, 10, 6


def talking_video(path: Path, sound: str | None = "aac", container: str = "mp4") -> None:
    """``FRAMES`` frames at ``FPS`` with a 440 Hz tone as long as them (or no sound)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=container) as out:
        video = out.add_stream("mpeg4", rate=FPS)
        video.width, video.height, video.pix_fmt = 48, 32, "yuv420p"
        audio = out.add_stream(sound, rate=RATE, layout="mono") if sound else None
        rng = np.random.default_rng(0)
        for _ in range(FRAMES):
            rgb = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        if audio is not None:
            seconds = np.arange(RATE * FRAMES // FPS) / RATE
            tone = (0.3 * np.sin(2 * np.pi * 440 * seconds) * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(tone[None], format="s16", layout="mono")
            frame.sample_rate = RATE
            for packet in [*audio.encode(frame), *audio.encode(None)]:
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)


def sound_of(path: Path) -> tuple[str, float] | None:
    """The codec and seconds of a video's sound; None when it has none."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return stream.codec_context.name, samples / stream.codec_context.sample_rate


def frame_count(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    try:
        return int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()


def parse(compose, ckpt: Path, tmp_path: Path, video: Path) -> tuple[dict, Path]:
    out = tmp_path / "out"
    result = predict(predict_config(compose, tmp_path, ckpt, f"input={video}",
                                    f"output_dir={out}", "save_frames=false"))
    assert (result["images"], result["failed"]) == (FRAMES, 0)
    return json.loads((out / f"{video.stem}_video.json").read_text()), out


@pytest.mark.parametrize(("sound", "container", "done"), [
    ("aac", "mp4", "copied"),
    ("pcm_s16le", "avi", "re-encoded to AAC"),  # mp4 holds no PCM
])
def test_both_videos_carry_the_inputs_sound(compose, ckpt, tmp_path, sound, container,
                                            done) -> None:
    video = tmp_path / f"talk.{container}"
    talking_video(video, sound, container)
    record, out = parse(compose, ckpt, tmp_path, video)
    assert record["audio"] == done
    for kind in ("overlay", "mask"):
        codec, seconds = sound_of(out / f"talk_{kind}.mp4")
        assert codec == "aac" and abs(seconds - FRAMES / FPS) < 0.1  # as long as the frames
        assert frame_count(out / f"talk_{kind}.mp4") == FRAMES
    assert sorted(p.name for p in out.iterdir()) == [
        "talk_mask.mp4", "talk_overlay.mp4", "talk_video.json"]  # no partial left


def test_a_silent_input_gives_silent_videos_and_says_so(compose, ckpt, tmp_path) -> None:
    video = tmp_path / "still.mp4"
    talking_video(video, sound=None)
    record, out = parse(compose, ckpt, tmp_path, video)
    assert record["audio"] == "none in the input"
    assert sound_of(out / "still_overlay.mp4") is None


def test_without_pyav_the_videos_stay_silent_with_one_warning(compose, ckpt, tmp_path,
                                                               monkeypatch, caplog) -> None:
    missing = "PyAV is not installed (pip install av)"
    monkeypatch.setattr(video_audio, "audio_copier_missing", lambda: missing)
    monkeypatch.setattr(video_outputs, "audio_copier_missing", lambda: missing)
    monkeypatch.setattr(video_outputs, "_said_no_copier", False)
    for name in ("a", "b"):
        talking_video(tmp_path / "in" / f"{name}.mp4")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        result = predict(predict_config(compose, tmp_path, ckpt, f"input={tmp_path / 'in'}",
                                        f"output_dir={out}", "save_frames=false"))
    assert result["images"] == 2 * FRAMES
    warnings = [r.getMessage() for r in caplog.records if "no sound" in r.getMessage()]
    assert warnings == [f"the output videos have no sound, the inputs' sound (if any) is not "
                        f"copied: {missing}"]  # once, not per video
    for name in ("a", "b"):
        record = json.loads((out / f"{name}_video.json").read_text())
        assert record["audio"] == f"not copied: {missing}"
        assert sound_of(out / f"{name}_overlay.mp4") is None


def test_an_unreadable_sound_leaves_the_video_silent_naming_it(compose, ckpt, tmp_path,
                                                              monkeypatch, caplog) -> None:
    def broken(source, video, out):
        raise ValueError("InvalidDataError: Invalid data found when processing input")

    monkeypatch.setattr(video_outputs, "copy_audio", broken)
    video = tmp_path / "talk.mp4"
    talking_video(video)
    with caplog.at_level(logging.WARNING):
        record, out = parse(compose, ckpt, tmp_path, video)
    assert record["audio"].startswith("not copied: InvalidDataError")
    assert f"{video}: its sound is not copied into the output videos" in caplog.text
    assert frame_count(out / "talk_overlay.mp4") == FRAMES


def pictures_of(source: Path, out: Path) -> Path:
    """``source``'s frames as OpenCV writes them for predict (mp4v, no sound)."""
    capture = cv2.VideoCapture(str(source))
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (48, 32))
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        writer.write(bgr)
    capture.release()
    writer.release()
    return out


def first_loud_second(path: Path) -> float:
    """When a video's sound first gets loud (the beep)."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        heard = 0
        for frame in container.decode(stream):
            level = np.abs(frame.to_ndarray().astype(np.float64)).max(axis=0)
            loud = np.flatnonzero(level > 0.5 * np.abs(np.iinfo(np.int16).max)
                                  if frame.format.name.startswith("s16") else level > 0.5)
            if loud.size:
                return (heard + loud[0]) / stream.codec_context.sample_rate
            heard += frame.samples
    raise AssertionError(f"{path} has no beep")


def test_re_encoded_sound_keeps_a_gap_so_what_follows_stays_in_time(tmp_path) -> None:
    """A paused recorder leaves a gap: closing it would play the beep 1 s early."""
    source = tmp_path / "gap.mkv"
    with av.open(str(source), "w", format="matroska") as out:
        video = out.add_stream("mpeg4", rate=FPS)
        video.width, video.height, video.pix_fmt = 48, 32, "yuv420p"
        audio = out.add_stream("pcm_s16le", rate=RATE, layout="mono")
        for _ in range(3 * FPS):  # 3 s
            for packet in video.encode(av.VideoFrame.from_ndarray(
                    np.zeros((32, 48, 3), np.uint8), format="rgb24")):
                out.mux(packet)
        tone = np.zeros(3 * RATE, np.int16)
        tone[int(2.5 * RATE):int(2.5 * RATE) + 320] = 30000  # the beep, at 2.5 s
        for at in range(0, 3 * RATE, 1600):
            if RATE <= at < 2 * RATE:
                continue  # no sound from 1 s to 2 s
            frame = av.AudioFrame.from_ndarray(tone[None, at:at + 1600], format="s16",
                                               layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = RATE, at, Fraction(1, RATE)
            for packet in audio.encode(frame):
                out.mux(packet)
        for packet in [*audio.encode(None), *video.encode(None)]:
            out.mux(packet)
    out = tmp_path / "out.mp4"
    assert video_audio.copy_audio(source, pictures_of(source, tmp_path / "pic.mp4"),
                                  out) == "re-encoded to AAC"
    assert abs(first_loud_second(out) - 2.5) < 0.01


def test_a_sound_without_a_decoder_leaves_the_videos_silent(compose, ckpt, tmp_path,
                                                            caplog) -> None:
    """An AVI whose sound format tag no decoder knows: silent videos, not a failed parse."""
    good = tmp_path / "good.avi"
    talking_video(good, "pcm_s16le", "avi")
    data = bytearray(good.read_bytes())
    tag = data.find(b"strf", data.find(b"auds")) + 8  # the WAVEFORMATEX format tag
    data[tag:tag + 2] = (0x7777).to_bytes(2, "little")
    odd = tmp_path / "in" / "odd.avi"
    odd.parent.mkdir()
    odd.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        record, out = parse(compose, ckpt, tmp_path, odd)
    assert record["audio"] == "not copied: ValueError: PyAV has no decoder for its sound"
    assert sound_of(out / "odd_mask.mp4") is None and sound_of(out / "odd_overlay.mp4") is None


def test_of_several_tracks_the_default_is_copied_and_the_record_says_so(compose, ckpt,
                                                                        tmp_path) -> None:
    video = tmp_path / "two.mkv"
    with av.open(str(video), "w", format="matroska") as out:
        picture = out.add_stream("mpeg4", rate=FPS)
        picture.width, picture.height, picture.pix_fmt = 48, 32, "yuv420p"
        tracks = [out.add_stream("aac", rate=RATE, layout="mono") for _ in range(2)]
        for _ in range(FRAMES):
            for packet in picture.encode(av.VideoFrame.from_ndarray(
                    np.zeros((32, 48, 3), np.uint8), format="rgb24")):
                out.mux(packet)
        for track in tracks:
            frame = av.AudioFrame.from_ndarray(np.zeros((1, RATE * FRAMES // FPS), np.int16),
                                               format="s16", layout="mono")
            frame.sample_rate = RATE
            for packet in [*track.encode(frame), *track.encode(None)]:
                out.mux(packet)
        for packet in picture.encode(None):
            out.mux(packet)
    record, out = parse(compose, ckpt, tmp_path, video)
    assert record["audio"] == "copied (audio track 1 of 2; the others are not)"


def test_a_failed_second_copy_leaves_both_videos_silent(compose, ckpt, tmp_path,
                                                        monkeypatch) -> None:
    """Not a mask video with sound beside a silent overlay, recorded as not copied."""
    calls = []

    def full_disk_on_the_second(source, video, out):
        calls.append(video)
        if len(calls) == 2:
            raise ValueError("FFmpegError: [Errno 28] No space left on device")
        return video_audio.copy_audio(source, video, out)

    monkeypatch.setattr(video_outputs, "copy_audio", full_disk_on_the_second)
    video = tmp_path / "talk.mp4"
    talking_video(video)
    record, out = parse(compose, ckpt, tmp_path, video)
    assert record["audio"] == "not copied: FFmpegError: [Errno 28] No space left on device"
    assert sound_of(out / "talk_mask.mp4") is None and sound_of(out / "talk_overlay.mp4") is None
    assert sorted(p.name for p in out.iterdir()) == [
        "talk_mask.mp4", "talk_overlay.mp4", "talk_video.json"]


def test_sound_is_moved_by_the_pictures_start_and_sound_before_it_dropped() -> None:
    """The output's first frame is at 0 s: the input's first picture time is taken off."""
    base = Fraction(1, 1000)
    packets = [SimpleNamespace(pts=t, dts=t, time_base=base, stream=None)
               for t in (100, 200, 300)]
    packets.append(SimpleNamespace(pts=None, dts=None, time_base=base, stream=None))  # flush
    timed = list(video_audio._timed(iter(packets), 0.2, "target"))
    assert [(seconds, p.pts, p.stream) for seconds, p in timed] == [
        (0.0, 0, "target"), (0.1, 100, "target")]
