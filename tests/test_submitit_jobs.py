"""A job killed from outside (out of memory, scancel) is a failed job; the sweep goes on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
from submitit.core.utils import UncompletedJobError  # noqa: E402

from hydra_plugins.faceparse_sweepers.submitit_jobs import collect_results  # noqa: E402


class _Job:
    def __init__(self, value: float | None) -> None:
        self.value = value

    def results(self) -> list:
        if self.value is None:
            raise UncompletedJobError("Job 7 (task: 0) has not produced any output\nlog...")
        return [self.value]


def test_a_killed_job_is_recorded_as_failed_and_the_others_results_are_kept(tmp_path, caplog):
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "status.json").write_text(json.dumps({"status": "running", "started": 1}))
    returns = collect_results([_Job(0.5), _Job(None), _Job(0.7)],
                              [["a=1"], ["a=2"], ["a=3"]], 2, tmp_path)
    assert [returns[0], returns[2]] == [0.5, 0.7]
    assert returns[1].return_value is None and returns[1].overrides == ["a=2"]
    status = json.loads((tmp_path / "3" / "status.json").read_text())
    assert status == {"status": "failed", "started": 1, "error": "killed from outside, no "
                      "result: Job 7 (task: 0) has not produced any output"}
    assert "job 3 (a=2) ended without a result: killed from outside" in caplog.text


@pytest.mark.slow
def test_a_sweep_goes_on_past_a_job_killed_from_outside(tiny, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "faceparse.train", "-m", *tiny, "callbacks.progress_bar=null",
           "callbacks.prediction_images=null", "hydra/launcher=submitit_local",
           f"hydra.sweep.dir={sweep}", "+callbacks.killer._target_=signal.raise_signal",
           "+callbacks.killer._args_=[9]", "optimizer.lr=0.001,0.002"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]  # SIGKILL: both jobs die, no traceback
    for job in ("0", "1"):
        status = json.loads((sweep / job / "status.json").read_text())
        assert status["status"] == "failed", status
        assert status["error"].startswith("killed from outside, no result: ")
    assert "ended without a result: killed from outside" in done.stdout + done.stderr
