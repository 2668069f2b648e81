"""``--help`` of each command says what that command takes, not every training group."""

from __future__ import annotations

import subprocess
import sys

import pytest

TRAINING_ONLY = ("optimizer: adamw, sgd", "hparams_search: optuna", "== Configuration groups ==")


@pytest.mark.slow
@pytest.mark.parametrize("command", ["eval", "predict", "export", "export_decoder", "prepare",
                                     "stats"])
def test_help_of_a_command_shows_its_usage_and_own_options(command: str, tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", f"faceparse.{command}", "--help"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"python -m faceparse.{command} ")
    assert f"task_name: {command}" in result.stdout  # its config, with the required ???
    assert not any(line in result.stdout for line in TRAINING_ONLY)
    assert not any(tmp_path.iterdir())  # --help runs nothing


@pytest.mark.slow
def test_help_of_train_lists_its_groups(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", "faceparse.train", "--help"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0 and "optimizer: adamw, sgd" in result.stdout
