"""The MFU ceiling: what the matrix kernels allow, and what a target leaves for the rest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from faceparse.bench.ceiling import MFU_TARGETS, format_ceiling, mfu_ceiling

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "mfu_ceiling.py"


def _part(whole_ms: float, matmul_ms: float, attention_ms: float, rest: dict[str, float]
          ) -> dict:
    classes = {"matmul / conv (tensor cores)": matmul_ms, "attention (flash / SDPA)": attention_ms,
               **rest}
    return {"whole_ms": whole_ms,
            "kernels": {"classes": {k: {"ms": v} for k, v in classes.items()}}}


def test_the_ceiling_is_the_work_over_the_matrix_kernels_time() -> None:
    # 8 images of 1000 GFLOP on a 1000 TFLOP/s card: 8 ms at 100%
    part = _part(40.0, 14.0, 2.0, {"batch / layer norm": 10.0, "elementwise / reduce": 9.0})
    ceiling = mfu_ceiling(part, 1000e9, 8, 1000.0, 0.40)
    assert ceiling["matrix_ms"] == pytest.approx(16.0)  # norms and elementwise are not
    assert ceiling["rest_ms"] == pytest.approx(24.0)  # other kernels and 5 ms of gaps
    assert ceiling["ceiling_mfu"] == pytest.approx(0.5)  # 8 ms of work in 16 ms
    assert ceiling["rest_budget_ms"] == pytest.approx(4.0)  # 40%: 20 ms in all, 16 taken
    text = format_ceiling(ceiling)
    assert "MFU ceiling 50.0%" in text and "the 40% target leaves 4.00 ms" in text


def test_a_target_above_the_ceiling_is_called_out_of_reach() -> None:
    ceiling = mfu_ceiling(_part(30.0, 20.0, 0.0, {}), 1000e9, 8, 1000.0, 0.50)
    assert ceiling["ceiling_mfu"] == pytest.approx(0.4)
    assert ceiling["rest_budget_ms"] == pytest.approx(-4.0)
    assert "is out of reach even if nothing else ran (4.00 ms short)" in format_ceiling(ceiling)


def test_without_a_peak_only_the_times_are_given() -> None:
    ceiling = mfu_ceiling(_part(30.0, 20.0, 1.0, {}), 1000e9, 8, None, MFU_TARGETS["train"])
    assert ceiling["matrix_ms"] == pytest.approx(21.0)
    assert ceiling["ceiling_mfu"] is None and ceiling["rest_budget_ms"] is None
    assert "no MFU ceiling" in format_ceiling(ceiling)


def test_matrix_kernels_outlasting_the_unprofiled_step_leave_the_rest_unknown() -> None:
    """Profiler overhead or noise can push the kernels past the step timed without it."""
    ceiling = mfu_ceiling(_part(30.0, 29.0, 2.0, {}), 1000e9, 8, 1000.0, 0.40)
    assert ceiling["matrix_ms"] == pytest.approx(31.0)
    assert ceiling["rest_ms"] is None  # not -1 ms
    assert ceiling["ceiling_mfu"] == pytest.approx(8 / 31)  # the kernels' own figures stand
    assert "everything else unknown (the profiled matrix kernels outlasted" in \
        format_ceiling(ceiling)


def _profile(peak: float | None) -> dict:
    return {"batch_size": 8, "forward_gflops_per_image": 1000.0,
            "train_gflops_per_image": 2000.0, "peak_bf16_tflops": peak,
            "train": {**_part(64.0, 30.0, 2.0, {"batch / layer norm": 20.0}), "mfu": 0.25},
            "infer": {**_part(20.0, 9.0, 1.0, {"elementwise / reduce": 6.0}), "mfu": 0.4}}


def test_the_script_finds_every_stored_profile_and_prints_its_ceiling(tmp_path: Path) -> None:
    """As a user runs it on a lease's gathered JSON, profiles nested at any depth."""
    path = tmp_path / "lease.json"
    noisy = _profile(None)
    noisy["infer"]["whole_ms"] = 9.5  # the profiled matrix kernels took 10 ms
    path.write_text(json.dumps({"machine": {"gpu": "H100"}, "before": {"profile": _profile(
        1000.0)}, "cpu": {"profile": _profile(None)}, "noisy": {"profile": noisy},
        # a census section's "train" is a flag: not a profile, and no reason to stop
        "census": {"frozen_vit_bf16": {"train": True, "infer": True}}}))
    done = subprocess.run([sys.executable, str(SCRIPT), str(path)], capture_output=True,
                          text=True, check=True)
    lines = done.stdout.splitlines()
    assert len(lines) == 2 + 6  # header, rule, train and infer of each profile
    # training: 16 TFLOP over 32 ms of matrix kernels, 50%; the 30% target allows 53.3 ms
    assert "| lease.json:/before/profile | train | 64.0 | 25.0% | 32.0 | 50.0% | 30% | 21.3 | " \
           "32.0 |" in lines
    # inference: 8 TFLOP over 10 ms, 80%; the 40% target allows 20 ms, 10 of them left
    assert "| lease.json:/before/profile | infer | 20.0 | 40.0% | 10.0 | 80.0% | 40% | 10.0 | " \
           "10.0 |" in lines
    assert "| lease.json:/cpu/profile | train | 64.0 | 25.0% | 32.0 | - | 30% | - | 32.0 |" \
           in lines
    assert "| lease.json:/noisy/profile | infer | 9.5 | 40.0% | 10.0 | - | 40% | - | - |" in lines


def test_the_script_refuses_a_file_without_a_profile(tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"train": {"images_per_s": 3.0}}))
    done = subprocess.run([sys.executable, str(SCRIPT), str(path)], capture_output=True,
                          text=True)
    assert done.returncode == 1
    assert f"error: {path}: no profile section in it" in done.stderr
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    done = subprocess.run([sys.executable, str(SCRIPT), str(broken)], capture_output=True,
                          text=True)
    assert done.returncode == 1 and f"error: {broken}: cannot read it as bench JSON" in done.stderr
