"""``ckpt_path=<run>/checkpoints/last.ckpt`` keeps the run's best checkpoint.

Before, Lightning dropped the best score when the checkpoint folder changed (always, with
``ckpt_path=``: a new run folder), so the first new epoch became "best" however bad, and was
tested and returned to a sweep.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from faceparse.train import train
from faceparse.training.best_checkpoint import carry_best

EXACT = ("scheduler=none", "data.num_workers=0", "callbacks.progress_bar=null",
         "callbacks.prediction_images=null")


def record(old: Path, score: float) -> dict:
    return {"dirpath": str(old.parent), "best_k_models": {str(old): torch.tensor(score)}}


def test_the_best_checkpoint_is_copied_and_stays_best_unless_beaten(tmp_path: Path) -> None:
    old = tmp_path / "old" / "epoch_002.ckpt"
    old.parent.mkdir()
    old.write_bytes(b"weights")
    callback = ModelCheckpoint(dirpath=tmp_path / "new", monitor="val/f1_mean", mode="max")
    carry_best(callback, record(old, 0.7))
    copy = tmp_path / "new" / "epoch_002.ckpt"
    assert copy.read_bytes() == b"weights" and old.is_file()
    assert callback.best_model_path == str(copy)
    assert float(callback.best_model_score) == pytest.approx(0.7)
    # Lightning's rule for a new epoch (save_top_k=1): saved only if it beats the record
    one_process = SimpleNamespace(strategy=SimpleNamespace(reduce_boolean_decision=bool))
    assert not callback.check_monitor_top_k(one_process, torch.tensor(0.6))
    assert callback.check_monitor_top_k(one_process, torch.tensor(0.8))


def test_a_best_checkpoint_that_is_gone_starts_a_fresh_record(tmp_path: Path, caplog) -> None:
    callback = ModelCheckpoint(dirpath=tmp_path / "new", monitor="val/loss", mode="min")
    carry_best(callback, record(tmp_path / "old" / "epoch_001.ckpt", 0.3))
    assert callback.best_model_path == "" and callback.best_model_score is None
    assert "epoch_001.ckpt (val/loss=0.3000) is gone" in caplog.text
    assert callback.check_monitor_top_k(None, torch.tensor(5.0))  # any new epoch is saved


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_resume_exactly_in_a_new_folder_tests_and_returns_the_true_best(
        compose, tiny, tmp_path: Path) -> None:
    """Run P's record says its epoch 0 scored 0.99 (no new epoch reaches that): the run
    resumed from P's last.ckpt keeps it as its best, tests it, and returns its score."""
    first, second = tmp_path / "P", tmp_path / "Q"
    tested_first = train(compose([*tiny, *EXACT], output_dir=first))
    last = first / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=False)
    (key,) = [k for k in state["callbacks"] if k.startswith("ModelCheckpoint{'monitor': 'val/")]
    state["callbacks"][key]["best_model_score"] = torch.tensor(0.99)
    (best,) = state["callbacks"][key]["best_k_models"]
    state["callbacks"][key]["best_k_models"][best] = torch.tensor(0.99)
    torch.save(state, last)
    before = {p.name: p.read_bytes() for p in (first / "checkpoints").iterdir()}

    metrics = train(compose([*tiny, *EXACT, "trainer.max_epochs=2", f"ckpt_path={last}"],
                            output_dir=second))
    assert sorted(p.name for p in (second / "checkpoints").iterdir()) == [
        "epoch_000.ckpt", "last.ckpt"]  # P's best, copied; epoch 1 did not beat it
    assert (second / "checkpoints" / "epoch_000.ckpt").read_bytes() == before["epoch_000.ckpt"]
    assert metrics["best/val/f1_mean"] == pytest.approx(0.99)
    assert metrics["test/loss"] == pytest.approx(tested_first["test/loss"], abs=1e-6)
    assert json.loads((second / "scores.json").read_text())["f1_mean"] == pytest.approx(
        tested_first["test/f1_mean"])
    assert {p.name: p.read_bytes() for p in (first / "checkpoints").iterdir()} == before
