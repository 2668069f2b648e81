"""A new run never writes into a folder that already holds a run.

Before, a second command with the same ``hydra.run.dir`` (or two started in the same second
with the default folder name) wrote over the first run's checkpoints, config, status and
scores, and appended its metrics to the first run's ``csv/metrics.csv``. Now it is refused
in one line naming the folder and ``resume=``, and the folder keeps every byte.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import OmegaConf

from faceparse.cli import CONF_DIR, register_resolvers
from faceparse.train import fit, resumed, train
from faceparse.training.job_status import STATUS_FILE, record_job
from faceparse.training.run_folder import hydra_subdir, run_evidence

REPO_ROOT = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def finished_run(folder: Path, cfg) -> None:
    """A run folder as a finished run leaves it (a stand-in checkpoint: nothing reads it)."""
    (folder / "checkpoints").mkdir(parents=True)
    shutil.copy(Path(__file__), folder / "checkpoints" / "last.ckpt")
    (folder / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (folder / STATUS_FILE).write_text(json.dumps({"status": "finished", "value": 0.5}))
    (folder / "csv").mkdir()
    (folder / "csv" / "metrics.csv").write_text("epoch,step,val/f1_mean\n0,1,0.5\n")
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "overrides.yaml").write_text("- optimizer.lr=0.001\n")
    (folder / "train.log").write_text("[INFO] - val/f1_mean (best checkpoint) = 0.5\n")


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_a_new_run_in_a_run_folder_is_refused_and_changes_nothing(compose, tiny,
                                                                  tmp_path: Path) -> None:
    """As typed: one ``error:`` line naming the folder and resume=; every file as it was
    (Hydra's ``.hydra/`` included: it leaves them to the job in a folder holding a run)."""
    run = tmp_path / "run"
    finished_run(run, compose(tiny, output_dir=run))
    before = snapshot(run)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "faceparse.train", *tiny,
                             "optimizer.lr=1e-5", f"hydra.run.dir={run}"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(f"error: the run folder {run} already "
                                                     "holds a run (checkpoints/last.ckpt)")
    assert f"resume={run}" in errors[0] and "hydra.run.dir=" in errors[0]
    assert "Traceback" not in result.stderr
    assert snapshot(run) == before


def test_what_counts_as_a_run(compose, tiny, tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    assert run_evidence(folder) is None
    assert hydra_subdir(None, str(folder)) == ".hydra"
    (folder / STATUS_FILE).write_text(json.dumps({"status": "failed", "error": "refused"}))
    assert run_evidence(folder) is None  # a command refused before training wrote anything
    for status in ("finished", "running", "interrupted"):  # "running": perhaps started now
        (folder / STATUS_FILE).write_text(json.dumps({"status": status}))
        assert run_evidence(folder) == f"status.json: {status}"
    (folder / STATUS_FILE).unlink()
    (folder / "csv").mkdir()
    (folder / "csv" / "metrics.csv").write_text("epoch\n")
    assert run_evidence(folder) == "csv/metrics.csv"
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "on_exception.ckpt").write_bytes(b"x")
    assert run_evidence(folder) == "checkpoints/on_exception.ckpt"
    assert hydra_subdir(None, str(folder)) is None  # the job writes .hydra/ once accepted
    with pytest.raises(ValueError, match="already holds a run"):
        train(compose(tiny, output_dir=folder))


def test_a_corrected_command_may_reuse_the_folder_of_its_refusal(compose, tiny,
                                                                 tmp_path: Path) -> None:
    """A refusal in a folder given with hydra.run.dir leaves a failed status there; the
    corrected command (and resume=auto, which starts afresh without a checkpoint) is
    accepted."""
    with pytest.raises(ValueError, match="data.batch_size=0"):
        record_job(fit, compose([*tiny, "data.batch_size=0"], output_dir=tmp_path),
                   accept=resumed)  # as faceparse.train's main does
    assert json.loads((tmp_path / STATUS_FILE).read_text())["status"] == "failed"
    assert resumed(compose(tiny, output_dir=tmp_path)).data.batch_size == 4
    assert resumed(compose([*tiny, "resume=auto"], output_dir=tmp_path)).resume == "auto"


def test_default_run_folders_are_unique_to_the_microsecond() -> None:
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        hydra = hydra_compose("train", return_hydra_config=True).hydra
    assert re.fullmatch(r"outputs/train/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d{6}", hydra.run.dir)
    # one folder per sweep, numbered jobs in it; two sweeps started in one second: two
    assert re.fullmatch(r"multirun/train/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d{6}",
                        hydra.sweep.dir)
