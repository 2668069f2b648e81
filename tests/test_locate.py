"""ckpt= accepts a checkpoint file or a training run folder."""

from pathlib import Path

import pytest

from faceparse.checkpoints import locate_checkpoint


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


def test_missing_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        locate_checkpoint(tmp_path / "nope.ckpt")
    with pytest.raises(FileNotFoundError, match="without checkpoints/"):
        locate_checkpoint(tmp_path)

