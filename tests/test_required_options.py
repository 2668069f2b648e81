"""A command run without an option it needs (``???`` in its config) is one ``error:`` line
naming the options and how the command is called, and leaves no run folder (it was an
OmegaConf traceback and a run folder for each of these)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("command", "given", "missing"), [
    ("predict", [], "ckpt=, input= are required (conf/predict.yaml"),
    ("eval", [], "ckpt= is required (conf/eval.yaml"),
    ("export", ["ckpt=model.ckpt"], "out= is required (conf/export.yaml"),
    ("export_decoder", [], "ckpt=, out= are required (conf/export_decoder.yaml"),
])
@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_a_missing_required_option_is_one_error_line(tmp_path: Path, command, given, missing
                                                     ) -> None:
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", f"faceparse.{command}", *given, f"hydra.run.dir={run}"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 1, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {missing}"), done.stderr
    assert f"usage: python -m faceparse.{command} " in lines[0]
    assert not run.exists()


@pytest.mark.parametrize(("launcher", "missing"), [
    ("joblib", "hydra_plugins.hydra_joblib_launcher and joblib"),
    ("slurm", "hydra_plugins.hydra_submitit_launcher and submitit"),
    ("submitit_local", "hydra_plugins.hydra_submitit_launcher and submitit"),
])
@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_a_launcher_without_the_sweeps_extra_is_one_line(tmp_path: Path, launcher, missing
                                                         ) -> None:
    """As typed where the extra is not installed (stand-ins that fail to import)."""
    fake = tmp_path / "absent"
    fake.mkdir()
    (fake / "sitecustomize.py").write_text(  # the installed ones hidden from find_spec
        "import importlib.util\n"
        "real = importlib.util.find_spec\n"
        "hidden = ('joblib', 'submitit', 'hydra_plugins.hydra_joblib_launcher',\n"
        "          'hydra_plugins.hydra_submitit_launcher')\n"
        "importlib.util.find_spec = lambda name, *a: None if name in hidden else real(name, *a)\n")
    done = subprocess.run(
        [sys.executable, "-m", "faceparse.train", "-m", f"hydra/launcher={launcher}",
         f"hydra.sweep.dir={tmp_path / 'sweep'}"], capture_output=True, text=True,
        timeout=120, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(REPO_ROOT)])})
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip() == (f"error: hydra/launcher={launcher} needs {missing}, from the "
                                   f"sweeps extra: pip install 'faceparse[sweeps]'")
    assert not (tmp_path / "sweep").exists()
