"""``python -m faceparse.predict`` when things go wrong part-way: a redo stopped by a full
disk, a decoder that raises on one photo, a pickled checkpoint typed ``trust_pickle=no``,
and a video with more than one face."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from predict_helpers import disk_full_for, predict_config, refusal, run_predict, write_image

from faceparse.predict import predict

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_a_redo_stopped_part_way_is_redone_by_the_rerun_not_kept_half_new(
        compose, ckpt, tmp_path, monkeypatch, caplog):
    """The mask (the record a rerun judges by) is written last: a redo whose colour picture
    failed leaves the old mask, so the rerun redoes the set instead of keeping a new mask
    beside the old checkpoint's colour picture."""
    from faceparse.labels import colorize, get_scheme

    write_image(tmp_path / "in" / "a.png", (20, 20))
    out = tmp_path / "out"
    assert predict(predict_config(compose, tmp_path, ckpt, f"input={tmp_path / 'in'}",
                                  f"output_dir={out}"))["images"] == 1
    other = tmp_path / "other" / "model.ckpt"  # another checkpoint: the outputs are stale
    other.parent.mkdir()
    os.link(ckpt, other)
    with monkeypatch.context() as patch:
        disk_full_for(patch, "a_color")
        refusal(predict_config(compose, tmp_path, other, f"input={tmp_path / 'in'}",
                               f"output_dir={out}"), caplog)
    rerun = predict(predict_config(compose, tmp_path, other, f"input={tmp_path / 'in'}",
                                   f"output_dir={out}"))
    assert (rerun["redone"], rerun["skipped"]) == (1, 0)
    labels = np.asarray(Image.open(out / "a_mask.png"))
    color = np.asarray(Image.open(out / "a_color.png").convert("RGB"))
    np.testing.assert_array_equal(color, colorize(labels, get_scheme("ourface")))


@pytest.mark.slow  # a whole command end to end (10-17 s): in CI's slow suite
def test_trust_pickle_typed_no_never_unpickles(tmp_path):
    """As a user types it: ``trust_pickle=no`` is refused in one line (exit 2), the payload
    of a pickled checkpoint never runs, and no run folder is left."""
    from test_safe_load import Payload

    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": Payload(marker)}, path)
    write_image(tmp_path / "photo.png", (20, 20))
    for trust, code, mark in (("trust_pickle=no", 1, "error: "), ("trust_pickle=false", 2,
                                                                 "[ERROR]")):
        done = run_predict(f"ckpt={path}", f"input={tmp_path / 'photo.png'}", trust,
                           f"output_dir={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'run'}")
        output = done.stdout + done.stderr
        errors = [line for line in output.splitlines() if mark in line]
        assert done.returncode == code and len(errors) == 1, output[-3000:]
        assert ("trust_pickle=no: use true or false" if "no" in trust else
                f"{path} was refused") in errors[0]
        assert "Traceback" not in output and not (tmp_path / "run").exists()
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_decoder_failure_on_one_photo_is_a_warning_not_the_end_of_the_run(
        compose, ckpt, tmp_path, monkeypatch, caplog):
    """Pillow raises more than OSError on real files (``struct.error``, ``TypeError`` from
    odd EXIF): the photo counts as failed, named, and the photos after it are parsed."""
    import struct

    import faceparse.inference.folder as folder

    for name in ("a.png", "b.png", "c.png"):
        write_image(tmp_path / "in" / name, (20, 16))
    real = folder.read_photo

    def fussy(path):
        if Path(path).name == "b.png":
            raise struct.error("required argument is not an integer")
        return real(path)

    monkeypatch.setattr(folder, "read_photo", fussy)
    with caplog.at_level(logging.WARNING):
        done = predict(predict_config(compose, tmp_path, ckpt, f"input={tmp_path / 'in'}",
                                      f"output_dir={tmp_path / 'out'}", "batch_size=1"))
    assert (done["images"], done["failed"]) == (2, 1)
    assert sorted(p.name for p in (tmp_path / "out").glob("*_mask.png")) == [
        "a_mask.png", "c_mask.png"]
    assert re.search(r"not a readable image \(error: required argument .*b\.png", caplog.text)


@pytest.mark.slow  # a whole command end to end (10-17 s): in CI's slow suite
def test_a_video_of_two_people_parses_both_faces_as_a_photo_would(compose, ckpt, tmp_path):
    """crop=faces on video: every face of a frame is parsed and pasted back, as for a photo
    (it used to parse the largest face only, the other left background without a word)."""
    from faceparse.inference import Parser

    face = cv2.resize(pytest.importorskip("skimage.data").astronaut(), (256, 256),
                      interpolation=cv2.INTER_AREA)
    frame = cv2.cvtColor(np.concatenate([face, face[:, ::-1]], axis=1), cv2.COLOR_RGB2BGR)
    (tmp_path / "in").mkdir()
    writer = cv2.VideoWriter(str(tmp_path / "in" / "two.mp4"),
                             cv2.VideoWriter_fourcc(*"mp4v"), 10, (512, 256))
    for _ in range(3):
        writer.write(frame)
    writer.release()
    capture = cv2.VideoCapture(str(tmp_path / "in" / "two.mp4"))
    decoded = cv2.cvtColor(capture.read()[1], cv2.COLOR_BGR2RGB)  # what the video run sees
    capture.release()
    photo = Parser.from_checkpoint(ckpt, device="cpu", crop="faces")(decoded)
    assert len(photo.boxes) >= 2 and {b[0] < 256 for b in photo.boxes} == {True, False}
    out = tmp_path / "out"
    done = predict(predict_config(compose, tmp_path, ckpt, f"input={tmp_path / 'in'}",
                                  f"output_dir={out}", "crop=faces"))
    assert done["videos"][str(tmp_path / "in" / "two.mp4")]["frames_without_face"] == []
    first = np.asarray(Image.open(out / "two_frames" / "000000_mask.png"))
    np.testing.assert_array_equal(first, photo.labels)  # smoothing=0: the photo's labels
