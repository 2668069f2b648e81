"""resume=: a stopped run continues in its own folder, with its own config, exactly."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from faceparse.train import train
from faceparse.training.run_folder import newest_checkpoint

# No LR schedule: its length follows max_epochs, and the stopped run is extended below.
EXACT = ("scheduler=none", "test=false", "data.num_workers=0", "trainer.deterministic=true")


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


def metric_rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_stopped_run_resumes_in_its_folder_to_the_same_weights(
    compose, tiny, tmp_path: Path
) -> None:
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    train(compose([*tiny, *EXACT, "trainer.max_epochs=2"], output_dir=whole))
    train(compose([*tiny, *EXACT, "trainer.max_epochs=1"], output_dir=stopped))
    assert torch.load(stopped / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2

    train(compose([*tiny, *EXACT, "trainer.max_epochs=2", f"resume={stopped}"],
                  output_dir=stopped))

    expected, resumed = weights(whole), weights(stopped)
    assert expected.keys() == resumed.keys()
    for key, value in expected.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=key)
    # one metrics file for the whole run: the stopped part's rows are kept, then continued
    epochs = {r["epoch"] for r in metric_rows(stopped) if r.get("val/f1_mean")}
    assert epochs == {"0", "1"}
    assert [r["train/loss"] for r in metric_rows(stopped) if r.get("train/loss")] == [
        r["train/loss"] for r in metric_rows(whole) if r.get("train/loss")]
    assert not list(tmp_path.glob("stopped*/csv/version_*"))


def test_resume_auto_starts_afresh_in_an_empty_folder(compose, tiny, tmp_path: Path) -> None:
    metrics = train(compose([*tiny, *EXACT, "resume=auto", "callbacks=none"],
                            output_dir=tmp_path))
    assert "val/f1_mean" in metrics and (tmp_path / "config_resolved.yaml").is_file()


def test_resume_refuses_what_would_be_a_different_run(compose, tiny, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FileNotFoundError, match="resume=.*needs config_resolved.yaml"):
        train(compose([*tiny, f"resume={run}"], output_dir=run))
    with pytest.raises(ValueError, match="this run writes to"):
        train(compose([*tiny, f"resume={run}"], output_dir=tmp_path / "elsewhere"))

    (run / "checkpoints").mkdir()
    shutil.copy(Path(__file__).parent / "conftest.py", run / "checkpoints" / "last.ckpt")
    saved = OmegaConf.to_yaml(compose(tiny, output_dir=run), resolve=True)
    (run / "config_resolved.yaml").write_text(saved)
    with pytest.raises(ValueError, match="changes the run's config.*data.image_size"):
        train(compose([*tiny, "data.image_size=64", f"resume={run}"], output_dir=run))
    with pytest.raises(ValueError, match="give one of them"):
        train(compose([*tiny, f"resume={run}", f"ckpt_path={run}/checkpoints/last.ckpt"],
                      output_dir=run))


class FailAfterOneStep(L.Callback):
    """Stands in for a kill: the run stops with an error after its first optimizer step."""

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        raise RuntimeError("stopped by the test")


def test_a_stopped_run_leaves_a_checkpoint_resume_picks(compose, tiny, tmp_path: Path) -> None:
    cfg = compose([*tiny, *EXACT, f"+callbacks.stop._target_={__name__}.FailAfterOneStep"],
                  output_dir=tmp_path)
    with pytest.raises(RuntimeError, match="stopped by the test"):
        train(cfg)
    saved = tmp_path / "checkpoints" / "on_exception.ckpt"
    assert torch.load(saved, weights_only=False)["global_step"] == 1
    assert newest_checkpoint(tmp_path) == saved
