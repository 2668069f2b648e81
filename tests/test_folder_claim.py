"""One job at a time in a run folder: two commands given the same folder at the same instant
both passed the checks that read it; the claim file is the atomic step."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from faceparse.training import folder_claim
from faceparse.training.folder_claim import CLAIM_FILE, claim_run_folder
from faceparse.training.job_status import STATUS_FILE, record_job

REPO_ROOT = Path(__file__).resolve().parents[1]


def _dead_pid() -> int:
    """A process id of this host that no longer runs."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _claim(folder: Path, host: str, pid: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CLAIM_FILE).write_text(json.dumps({"host": host, "pid": pid, "started": 0.0}))
    return folder / CLAIM_FILE


def test_a_held_folder_is_refused_naming_the_job_and_the_claim_goes_when_the_job_ends(
        tmp_path: Path) -> None:
    with claim_run_folder(tmp_path):
        held = json.loads((tmp_path / CLAIM_FILE).read_text())
        assert (held["host"], held["pid"]) == (socket.gethostname(), os.getpid())
        refused = rf"{tmp_path} is in use by another job \(process {os.getpid()} on "
        with pytest.raises(ValueError, match=refused), claim_run_folder(tmp_path):
            pass
        assert (tmp_path / CLAIM_FILE).is_file()  # the refused one left the holder's claim
    assert not (tmp_path / CLAIM_FILE).exists()
    with pytest.raises(RuntimeError), claim_run_folder(tmp_path):
        raise RuntimeError("the job failed")
    assert not (tmp_path / CLAIM_FILE).exists()  # released however the job ends


def test_a_dead_jobs_claim_is_taken_over_another_hosts_is_refused_naming_the_file(
        tmp_path: Path, monkeypatch) -> None:
    _claim(tmp_path / "dead", socket.gethostname(), _dead_pid())
    with claim_run_folder(tmp_path / "dead"):
        assert json.loads((tmp_path / "dead" / CLAIM_FILE).read_text())["pid"] == os.getpid()
    claim = _claim(tmp_path / "far", "node-17", 4242)
    with pytest.raises(ValueError, match=rf"process 4242 on node-17.*delete {claim}$"), \
            claim_run_folder(tmp_path / "far"):
        pass
    assert json.loads(claim.read_text())["host"] == "node-17"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # the requeued job's earlier attempt
    with claim_run_folder(tmp_path / "far"):
        assert json.loads(claim.read_text())["pid"] == os.getpid()


def test_only_the_rank_that_writes_claims(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(folder_claim, "is_rank_zero", lambda: False)
    _claim(tmp_path, "node-17", 4242)
    with claim_run_folder(tmp_path):  # rank 1 shares rank 0's folder
        pass
    assert (tmp_path / CLAIM_FILE).is_file()


def test_a_job_refused_for_a_held_folder_writes_nothing_there(compose, tiny,
                                                              tmp_path: Path) -> None:
    claim = _claim(tmp_path, socket.gethostname(), os.getpid())  # a live job holds it
    cfg = compose(tiny, output_dir=tmp_path)
    with pytest.raises(ValueError, match="in use by another job"):
        record_job(lambda cfg: {}, cfg, accept=lambda cfg: cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CLAIM_FILE]
    claim.unlink()
    assert record_job(lambda cfg: {}, cfg) is None  # free again: the job runs
    assert json.loads((tmp_path / STATUS_FILE).read_text())["status"] == "finished"
    assert not claim.exists()


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_train_in_a_folder_another_job_holds_is_one_error_line(tiny, tmp_path: Path) -> None:
    """As typed: the second of two commands with one hydra.run.dir."""
    run = tmp_path / "run"
    _claim(run, socket.gethostname(), os.getpid())  # a live job holds it
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "faceparse.train", *tiny,
                             f"hydra.run.dir={run}"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: the run folder {run} is in use by another job (process {os.getpid()}")
    assert "Traceback" not in result.stderr
    # claimed before Hydra wrote .hydra/ or a log there: the holder's folder is untouched
    assert sorted(p.name for p in run.iterdir()) == [CLAIM_FILE]
