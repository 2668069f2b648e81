"""A refused ``resume=`` changes nothing in the run it refused to touch.

A command that resume's checks refuse (a changed key, a moved folder, no checkpoint, a file
given, a second starting point) prints its one ``error:`` line and exits 1, and the run's
folder keeps every byte: its ``status.json`` (a finished run must not read "failed" in
``faceparse.report``), its configs and Hydra's ``.hydra/`` files. Once the checks accept a
resume, the command is the run's continuation, and a failure is recorded as the run's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import OmegaConf

from faceparse.cli import CONF_DIR, register_resolvers
from faceparse.train import fit, resumed
from faceparse.training import job_status
from faceparse.training.job_status import STATUS_FILE, record_job

EXACT = ("scheduler=none", "test=false", "data.num_workers=0", "trainer.deterministic=true")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def fake_run(folder: Path, cfg, status: str = "finished") -> None:
    """A run folder as training leaves it: config, checkpoint (a stand-in: resume's checks
    never read it), status, Hydra's files and log."""
    (folder / "checkpoints").mkdir(parents=True)
    shutil.copy(Path(__file__).parent / "conftest.py", folder / "checkpoints" / "last.ckpt")
    (folder / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (folder / STATUS_FILE).write_text(json.dumps({"status": status, "value": 0.5}))
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "overrides.yaml").write_text("- data.image_size=32\n")
    (folder / "train.log").write_text("[INFO] - val/f1_mean (best checkpoint) = 0.5\n")


def test_refused_resume_leaves_the_run_as_it_was(compose, tiny, tmp_path: Path,
                                                 monkeypatch) -> None:
    """What ``faceparse.train``'s main does: ``record_job(fit, cfg, accept=resumed)``."""
    run = tmp_path / "run"
    fake_run(run, compose(tiny, output_dir=run))
    before = snapshot(run)
    with pytest.raises(ValueError, match=r"changes the run's config \(data.image_size\)"):
        record_job(fit, compose([f"resume={run}", "data.image_size=64"], output_dir=run),
                   accept=resumed)
    assert snapshot(run) == before
    monkeypatch.setattr(job_status, "in_multirun", lambda: True)  # a sweep goes on
    assert record_job(fit, compose([f"resume={run}", "data.image_size=64"], output_dir=run),
                      accept=resumed) is None
    assert snapshot(run) == before
    monkeypatch.undo()

    # accepted, then failing (here: its checkpoint is no checkpoint): the run's failure
    with pytest.raises(ValueError, match="last.ckpt"):
        record_job(fit, compose([f"resume={run}", "trainer.max_epochs=2"], output_dir=run),
                   accept=resumed)
    status = json.loads((run / STATUS_FILE).read_text())
    assert status["status"] == "failed" and "last.ckpt" in status["error"]
    assert OmegaConf.load(run / "config_resolved.yaml").trainer.max_epochs == 2


@pytest.mark.parametrize("resume, wanted", [(None, ".hydra"), ("auto", None), ("/r", None)])
def test_hydra_leaves_its_files_in_a_resumed_folder_to_the_job(resume, wanted) -> None:
    """``.hydra/`` would otherwise be rewritten before resume's checks run."""
    register_resolvers()
    overrides = [f"resume={resume}"] if resume else []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    assert cfg.hydra.output_subdir == wanted


def cli(*overrides: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "faceparse.train", *overrides], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_refused_resume_commands_change_nothing(compose, tiny, tmp_path: Path) -> None:
    """Each refusal as a user types it, against a finished run (and copies of it moved, or
    without checkpoints): exit 1, the one-line reason, every file of the folder unchanged.
    (``this run writes to`` and ``give one of them`` take the same way out: in-process in
    test_resume.py.)"""
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    record_job(fit, compose([*tiny, *EXACT], output_dir=run), accept=resumed)  # as main does
    assert json.loads((run / STATUS_FILE).read_text())["status"] == "finished"
    (run / "train.log").write_text("[INFO] - done\n")  # the command line's run has its log
    moved, bare = tmp_path / "moved", tmp_path / "bare"
    shutil.copytree(run, moved)
    shutil.copytree(run, bare)
    shutil.rmtree(bare / "checkpoints")
    elsewhere.mkdir()
    refusals = {  # command -> its reason
        (f"resume={run}", "data.image_size=64"): "changes the run's config",
        ("resume=auto", f"hydra.run.dir={run}", "scheduler=cosine"):
            "changes the run's config",
        (f"resume={moved}",): "was the folder moved?",
        (f"resume={bare}",): "needs config_resolved.yaml and a checkpoints/last.ckpt",
        (f"resume={run / 'checkpoints' / 'last.ckpt'}",): "is a file",
    }
    before = {folder: snapshot(folder) for folder in (run, moved, bare)}
    for command in refusals:  # one at a time: two at once in one folder, the second is
        process = cli(*command, cwd=elsewhere)  # refused as the folder is in use
        _, stderr = process.communicate(timeout=600)
        reason = refusals[command]
        assert process.returncode == 1, (command, stderr[-3000:])
        errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and reason in errors[0], (command, stderr[-3000:])
        assert "Traceback" not in stderr, command
    for folder, files in before.items():
        assert snapshot(folder) == files, folder
    assert not list(elsewhere.rglob(STATUS_FILE))  # a refused command records no run


def test_resuming_a_finished_run_without_a_longer_length_is_refused(compose, tiny,
                                                                   tmp_path: Path) -> None:
    """It trained nothing, tested again and wrote its record over (0 images/s, the
    status's metrics gone)."""
    run = tmp_path / "run"
    fake_run(run, compose(tiny, output_dir=run))
    before = snapshot(run)
    for same in ([], ["trainer.max_epochs=1"]):  # its own length, typed or not
        with pytest.raises(ValueError, match=r"the run finished at its length \(trainer."
                                             r"max_epochs=1, trainer.max_steps=-1\); resuming "
                                             r"it with that length would train nothing"):
            resumed(compose([f"resume={run}", *same], output_dir=run))
    assert snapshot(run) == before
    longer = resumed(compose([f"resume={run}", "trainer.max_epochs=2"], output_dir=run))
    assert longer.trainer.max_epochs == 2
    # resume=auto makes sure a run is done (a sweep typed again): no refusal
    assert resumed(compose([*tiny, "resume=auto"], output_dir=run)).trainer.max_epochs == 1
