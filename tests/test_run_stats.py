"""run_stats.json's peak memory is the job's own, also for jobs sharing one process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from faceparse.training import run_stats
from faceparse.training.run_stats import peak_memory_mb, reset_peak_rss

CPU = torch.device("cpu")


# run in a fresh process: a test process's own earlier peak (GBs, after other tests)
# would hide the 400 MiB one job adds
TWO_JOBS = """
import numpy as np, torch
from faceparse.training.run_stats import peak_memory_mb, reset_peak_rss
big = np.ones(400 * 2**20 // 8); big[:] = 2.0         # job 0 touches 400 MiB
first, _ = peak_memory_mb(torch.device("cpu"))
del big
reset = reset_peak_rss()                               # job 1's fit starts
small = np.ones(20 * 2**20 // 8); small[:] = 1.0
second, measure = peak_memory_mb(torch.device("cpu"), rss_reset=reset)
print(first, second, measure)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux /proc only")
def test_a_later_job_in_the_same_process_gets_its_own_cpu_peak() -> None:
    """A sweep's jobs run one after another in one process: the whole-life peak made every
    job after a large one report that one's memory (a 32 px job above a 224 px job)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", TWO_JOBS], capture_output=True, text=True,
                          timeout=120, check=True)
    first, second, measure = done.stdout.split()
    assert measure == "process_peak_rss_since_fit_start"
    assert float(second) < float(first) - 300   # not job 0's 400 MiB again


def test_without_a_reset_the_whole_life_peak_says_so(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(run_stats, "PROC_SELF", tmp_path / "absent")  # not Linux
    assert not reset_peak_rss()
    peak, measure = peak_memory_mb(CPU, rss_reset=False)
    assert measure == "process_max_rss" and peak > 0


def test_a_resumed_run_adds_its_earlier_training_to_the_record(tmp_path: Path) -> None:
    """Resuming rewrote run_stats.json with the last attempt's batches only (0 images for
    a finished run resumed)."""
    import json
    from types import SimpleNamespace

    from faceparse.training.run_stats import RunStats

    (tmp_path / "run_stats.json").write_text(json.dumps({"train_images": 8,
                                                         "train_seconds": 20.0}))
    stats = RunStats(tmp_path)
    module = SimpleNamespace(device=CPU)
    stats.on_fit_start(SimpleNamespace(ckpt_path=str(tmp_path / "last.ckpt")), module)
    assert (stats.images, stats.seconds) == (8, 20.0)
    fresh = RunStats(tmp_path)
    fresh.on_fit_start(SimpleNamespace(ckpt_path=None), module)  # a new run counts afresh
    assert (fresh.images, fresh.seconds) == (0, 0.0)


def test_an_interrupted_fit_still_writes_its_figures(tmp_path: Path) -> None:
    """SIGTERM, an out-of-memory: the report showed "-" for the job whose peak mattered."""
    import json
    from types import SimpleNamespace

    from faceparse.training.run_stats import RunStats

    stats = RunStats(tmp_path)
    module = SimpleNamespace(device=CPU, parameters=lambda: iter([torch.nn.Parameter(
        torch.zeros(3))]))
    trainer = SimpleNamespace(ckpt_path=None, state=SimpleNamespace(fn="fit"))
    stats.on_fit_start(trainer, module)
    stats.images, stats.seconds = 12, 3.0
    stats.on_exception(trainer, module, KeyboardInterrupt())
    written = json.loads((tmp_path / "run_stats.json").read_text())
    assert written["train_images"] == 12 and written["params_total"] == 3
    assert written["peak_memory_mb"] > 0
    (tmp_path / "run_stats.json").unlink()
    stats.on_exception(SimpleNamespace(state=SimpleNamespace(fn="test")), module, ValueError())
    assert not (tmp_path / "run_stats.json").exists()  # a failed test pass: nothing to add
