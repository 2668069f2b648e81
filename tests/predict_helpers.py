"""Inputs and runs for the ``faceparse.predict`` tests: photos, a short video, the
command's config, the command as a user runs it (a subprocess), its one-line refusal
and a disk that fills up."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from PIL import Image

import faceparse.data.io
import faceparse.predict as predict_command


def write_image(path: Path, size: tuple[int, int], seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


def write_video(path: Path, frames: int = 4) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (48, 32))
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    for _ in range(frames):  # a still scene with sensor noise: what smoothing is for
        noise = rng.integers(-20, 21, base.shape)
        writer.write(np.clip(base.astype(int) + noise, 0, 255).astype(np.uint8))
    writer.release()


def run_predict(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "faceparse.predict", "device=cpu",
                           "num_workers=1", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def predict_config(compose, tmp_path: Path, ckpt: Path, *overrides: str):
    return compose([f"ckpt={ckpt}", "device=cpu", "num_workers=0", *overrides],
                   config="predict", output_dir=tmp_path / "run")


def refusal(cfg, caplog) -> str:
    """The command's one error line, after it stopped with exit code 2."""
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_:
        predict_command.main.__wrapped__(cfg)
    assert exit_.value.code == 2
    error, = (r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    return error


def disk_full_for(monkeypatch, written: str) -> None:
    """Writes of files named ``written*`` fail as on a full disk (ENOSPC on the temporary
    file ``write_atomic`` fills); every other write goes through."""
    def replace(src, dst):
        if Path(dst).name.startswith(written):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
        os.replace(src, dst)

    monkeypatch.setattr(faceparse.data.io, "os", SimpleNamespace(getpid=os.getpid,
                                                                 replace=replace))
