"""A sweep job is one job: its DDP ranks train that job's hyperparameters in its folder
(not a sweep of their own), and a job folder another job holds keeps its own ``.hydra/``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from faceparse.training.folder_claim import CLAIM_FILE
from faceparse.training.run_folder import hydra_subdir
from faceparse.training.sweep_ranks import job_command

FAST = ("data.dataset.sizes={train: 8, val: 4, test: 4}", "callbacks.progress_bar=null",
        "callbacks.prediction_images=null", "data.num_workers=0")


def run_sweep(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "faceparse.train", "-m", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_a_training_sweep_job_leaves_hydra_files_to_the_job():
    """Hydra writes .hydra/ before any callback of a sweep job runs: the job writes it once
    it holds its folder. Other commands' sweeps and single runs keep Hydra's own write."""
    assert hydra_subdir(None, None, "MULTIRUN", "train") is None
    assert hydra_subdir(None, None, "RUN", "train") == ".hydra"
    assert hydra_subdir(None, None, "MULTIRUN", "eval") == ".hydra"


def test_the_ranks_get_the_sweeps_config_source_and_the_jobs_overrides():
    argv = ["train.py", "-m", "--config-dir", "extra", "-cn=mine", "optimizer.lr=1e-3,1e-2"]
    command = job_command(argv, ["hydra.sweep.dir=s", "hydra.mode=MULTIRUN",
                                 "hydra.run.dir=r", "hydra/launcher=joblib"],
                          ["optimizer.lr=0.001", "experiment=mine"])
    assert command == ["train.py", "--config-dir", "extra", "-cn=mine", "hydra.sweep.dir=s",
                       "hydra/launcher=joblib", "optimizer.lr=0.001", "experiment=mine",
                       "hydra.mode=RUN"]


@pytest.mark.slow
def test_ddp_ranks_of_a_sweep_job_train_that_job(tiny, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    done = run_sweep(tmp_path, *tiny, *FAST, "trainer=ddp_cpu", f"hydra.sweep.dir={sweep}",
                     "optimizer.lr=0.001,0.002")
    assert (done.stdout + done.stderr).count("Launching 2 jobs locally") == 1
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "outputs").exists()
    for job, lr in (("0", 0.001), ("1", 0.002)):
        folder = sweep / job
        assert json.loads((folder / "status.json").read_text())["status"] == "finished"
        assert (folder / "train_ddp_process_1.log").is_file()  # rank 1 ran in this folder
        overrides = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text())
        assert f"optimizer.lr={lr}" in overrides
        resolved = yaml.safe_load((folder / "config_resolved.yaml").read_text())
        assert resolved["optimizer"]["lr"] == lr


@pytest.mark.slow
def test_a_job_folder_another_job_holds_keeps_its_hydra_files(tiny, tmp_path: Path) -> None:
    """Another worker holds job folder 0 (its claim, its .hydra/): this sweep's job 0 is
    refused and writes nothing there."""
    held = tmp_path / "sweep" / "0"
    (held / ".hydra").mkdir(parents=True)
    (held / ".hydra" / "overrides.yaml").write_text("- optimizer.lr=0.005\n")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (held / CLAIM_FILE).write_text(json.dumps(
            {"host": socket.gethostname(), "pid": holder.pid, "started": time.time()}))
        done = run_sweep(tmp_path, *tiny, *FAST, f"hydra.sweep.dir={tmp_path / 'sweep'}",
                         "optimizer.lr=0.001")
    finally:
        holder.kill()
    assert "in use by another job" in done.stdout + done.stderr
    assert (held / ".hydra" / "overrides.yaml").read_text() == "- optimizer.lr=0.005\n"
    assert sorted(os.listdir(held / ".hydra")) == ["overrides.yaml"]
    assert not (held / "status.json").exists()
