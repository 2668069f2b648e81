"""ckpt= accepts a checkpoint file or a training run folder."""

from pathlib import Path

import pytest

from faceparse.checkpoints import locate_checkpoint
from faceparse.checkpoints.locate import best_checkpoint_pattern


def _run(tmp_path: Path, *names: str) -> Path:
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("a: 1\n")
    (tmp_path / "checkpoints").mkdir()
    for name in names:
        (tmp_path / "checkpoints" / name).write_bytes(b"x")
    return tmp_path


def test_a_file_is_taken_as_given(tmp_path):
    file = tmp_path / "model.ckpt"
    file.write_bytes(b"x")
    found = locate_checkpoint(file)
    assert found.path == file and found.run_dir is None and found.run_config is None


def test_a_run_folder_gives_its_best_checkpoint_and_config(tmp_path):
    run = _run(tmp_path, "epoch_003.ckpt", "last.ckpt")
    found = locate_checkpoint(run)
    assert found.path == run / "checkpoints" / "epoch_003.ckpt"
    assert found.run_config == run / ".hydra" / "config.yaml"


@pytest.mark.parametrize(("names", "message"), [
    (("last.ckpt",), "only .*last.ckpt exists"),
    (("epoch_001.ckpt", "epoch_002.ckpt"), "several checkpoints"),
])
def test_an_ambiguous_or_unscored_run_is_refused(tmp_path, names, message):
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        locate_checkpoint(_run(tmp_path, *names))


@pytest.mark.parametrize("names", [
    ("last.ckpt", "on_exception.ckpt"),  # stopped (Ctrl-C, SIGTERM) before any validation
    ("last.ckpt", "last-v1.ckpt", "hpc_ckpt_3.ckpt", "notes.ckpt"),
])
def test_only_a_monitored_best_checkpoint_counts(tmp_path, names):
    """A stopped run's on_exception.ckpt (or any other file) is never scored as the best."""
    run = _run(tmp_path, *names)
    with pytest.raises(FileNotFoundError, match="no best checkpoint") as info:
        locate_checkpoint(run)
    assert all(name in str(info.value) for name in names)  # what the user may pass instead
    (run / "checkpoints" / "epoch_004.ckpt").write_bytes(b"x")
    assert locate_checkpoint(run).path == run / "checkpoints" / "epoch_004.ckpt"


def test_the_runs_own_checkpoint_names_are_read_from_its_config(tmp_path):
    run = _run(tmp_path, "epoch=2-f1=0.512.ckpt", "epoch_000.ckpt", "last.ckpt")
    (run / ".hydra" / "config.yaml").write_text(
        "callbacks:\n  model_checkpoint:\n    filename: 'epoch={epoch}-f1={val/f1_mean:.3f}'\n")
    assert locate_checkpoint(run).path == run / "checkpoints" / "epoch=2-f1=0.512.ckpt"


@pytest.mark.parametrize(("filename", "name", "matches"), [
    ("epoch_{epoch:03d}", "epoch_007.ckpt", True),
    ("epoch_{epoch:03d}", "epoch_007-v1.ckpt", True),
    ("epoch_{epoch:03d}", "on_exception.ckpt", False),
    ("epoch_{epoch:03d}", "epoch_007.ckpt.bak", False),
    ("{epoch}-{step}", "epoch=3-step=120.ckpt", True),
    ("{epoch}-{step}", "last.ckpt", False),
])
def test_best_checkpoint_pattern(filename, name, matches):
    assert bool(best_checkpoint_pattern(filename).fullmatch(name)) is matches


def test_missing_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        locate_checkpoint(tmp_path / "nope.ckpt")
    with pytest.raises(FileNotFoundError, match="without checkpoints/"):
        locate_checkpoint(tmp_path)

