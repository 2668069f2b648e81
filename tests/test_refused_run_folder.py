"""A command refused before its work leaves no run folder behind.

Hydra creates the run folder (``outputs/<task>/<time>/``, its log and ``.hydra/``) before
the job starts; a command our entry points refuse in one line (a bad option, a missing
input, a refused ``resume=``) removes it again, with the folders created along with it,
but only a folder this command created and that holds nothing but Hydra's files and the
job's bookkeeping: a folder that was there before, or one with any result in it, stays.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig

from faceparse.cli import hydra_entry, keep_run_folder, one_line_errors
from faceparse.train import resumed

REPO_ROOT = Path(__file__).resolve().parents[1]


def command(argv: list[str]) -> subprocess.CompletedProcess:
    """``python -m faceparse.<argv>`` as a user runs it, with this checkout's code."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.mark.parametrize("argv, code, message", [
    # refused after status.json is written
    (["faceparse.train", "train=false"], 1, "error: train=false tests a checkpoint"),
    # predict logs its refusal (into the log file too) and exits 2
    (["faceparse.predict", "ckpt=none.ckpt", "input=no_such_photo.jpg", "device=cpu"], 2,
     "input=no_such_photo.jpg: no such file or folder"),
    # the missing DINOv3 weights, met three constructors deep (model > net > encoder > ViT):
    # the innermost message, not Hydra's nested "Error in call to target" wrappers
    (["faceparse.train", "data=lapa", "data.root=no_such_lapa"], 1,
     "error: the frozen DINOv3 ViT-L/16 has no weights (vit.weights is null)"),
])
@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_a_refused_command_leaves_no_run_folder(tmp_path: Path, argv, code, message) -> None:
    run = tmp_path / "outputs" / "day" / "run"
    result = command([*argv, f"hydra.run.dir={run}"])
    out = result.stdout + result.stderr
    assert result.returncode == code, out[-2000:]
    assert message in out and "Traceback" not in out, out[-2000:]
    assert "Error in call to target" not in out, out[-2000:]
    assert list(tmp_path.iterdir()) == []  # the folders created for the run went with it


@pytest.fixture
def in_process_hydra(monkeypatch) -> Iterator[Callable[..., None]]:
    """Run a command in this process as from a shell; Hydra's logging set-up undone after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(main: Callable[[], Any], *argv: str) -> None:
        monkeypatch.setattr(sys, "argv", ["faceparse", *argv])
        with pytest.raises(SystemExit) as exit_:
            main()
        assert exit_.value.code == 1

    yield run
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


@hydra_entry("stats")  # any command's config without required options: only its run folder matters
@one_line_errors(ValueError)
def refused(cfg: DictConfig) -> None:
    raise ValueError("refused")


@hydra_entry("stats")
@one_line_errors(ValueError)
def refused_with_a_result(cfg: DictConfig) -> None:
    (Path(cfg.paths.output_dir) / "masks").mkdir()
    (Path(cfg.paths.output_dir) / "masks" / "photo.png").write_bytes(b"png")
    raise ValueError("refused")


@hydra_entry("stats")
@one_line_errors(ValueError)
def failed_at_work(cfg: DictConfig) -> None:
    keep_run_folder()
    raise ValueError("failed")


@hydra_entry("train")
@one_line_errors(FileNotFoundError)
def resume_only(cfg: DictConfig) -> None:
    resumed(cfg)


def test_a_new_folder_goes_and_an_old_one_stays(in_process_hydra, tmp_path: Path) -> None:
    new = tmp_path / "new" / "run"
    in_process_hydra(refused, f"hydra.run.dir={new}")
    assert not (tmp_path / "new").exists()

    old = tmp_path / "old"
    old.mkdir()
    in_process_hydra(refused, f"hydra.run.dir={old}")
    assert (old / ".hydra" / "overrides.yaml").is_file()  # Hydra's files in a user's folder


def test_a_folder_with_results_or_after_the_work_started_stays(in_process_hydra,
                                                               tmp_path: Path) -> None:
    in_process_hydra(refused_with_a_result, f"hydra.run.dir={tmp_path / 'result'}")
    assert (tmp_path / "result" / "masks" / "photo.png").is_file()
    in_process_hydra(failed_at_work, f"hydra.run.dir={tmp_path / 'failed'}")
    assert (tmp_path / "failed" / ".hydra").is_dir()


def test_a_sweep_keeps_its_job_folders(in_process_hydra, tmp_path: Path) -> None:
    in_process_hydra(refused, "-m", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert (tmp_path / "sweep" / "0" / ".hydra").is_dir()


def test_a_refused_resume_of_a_folder_that_is_no_run(in_process_hydra, tmp_path: Path) -> None:
    """``resume=<typo>`` makes the typo Hydra's run folder: it goes; a real folder stays."""
    in_process_hydra(resume_only, f"resume={tmp_path / 'typo'}")
    assert not (tmp_path / "typo").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    in_process_hydra(resume_only, f"resume={empty}")
    assert empty.is_dir()
