"""Two CPU processes (gloo) on tiny data: one run folder, one writer, single-process scores.

The evaluation splits have 9 images: a sampler that pads the ranks with a repeated image
would count it twice and move the scores away from the one-process run's; and with 4
images a batch, rank 0 runs two test batches where rank 1 runs one.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from faceparse.train import train

pytestmark = pytest.mark.slow

ODD = ("data.dataset.sizes={train: 8, val: 9, test: 9}", "data.num_workers=0",
       "callbacks.step_checkpoint.every_n_train_steps=1")


def run_two_processes(args: list[str], run_dir: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "faceparse.train", *args, "trainer=ddp_cpu",
           f"hydra.run.dir={run_dir}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=run_dir.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def ddp_run(tiny, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A finished 2-process run (1 epoch) alone in its parent folder, and its log."""
    run_dir = tmp_path_factory.mktemp("ddp") / "run"
    done = run_two_processes([*tiny, *ODD], run_dir)
    return run_dir, done.stdout + done.stderr


def test_two_processes_write_one_folder_once(ddp_run) -> None:
    run_dir, output = ddp_run
    assert [p.name for p in run_dir.parent.iterdir()] == ["run"]
    assert len(list(run_dir.rglob("config_resolved.yaml"))) == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "epoch_000.ckpt", "last.ckpt"]
    # the resolved config (hparams.yaml, rank 0 only) and one metrics file
    assert sorted(p.name for p in (run_dir / "csv").iterdir()) == ["hparams.yaml", "metrics.csv"]
    assert json.loads((run_dir / "scores.json").read_text())["scheme"] == "ourface"
    # the score is logged once (rank 1 is quiet), and Lightning's sync advice is not printed
    assert output.count("val/f1_mean (best checkpoint) = ") == 1
    assert "sync_dist=True" not in output and "Warning" not in output


def test_two_process_scores_equal_one_process_scores(ddp_run, compose, tiny,
                                                     tmp_path: Path) -> None:
    """The 2-process test of the best checkpoint counts each test image once."""
    run_dir, _ = ddp_run
    two = json.loads((run_dir / "scores.json").read_text())
    best = run_dir / "checkpoints" / "epoch_000.ckpt"
    one = train(compose([*tiny, *ODD, "train=false", f"ckpt_path={best}"], output_dir=tmp_path))
    assert two["f1_mean"] == pytest.approx(one["test/f1_mean"], abs=1e-6)
    assert two["pixel_acc"] == pytest.approx(one["test/pixel_acc"], abs=1e-6)
    assert two["miou"] == pytest.approx(one["test/miou"], abs=1e-6)
    for row in two["classes"]:
        if row["present"]:
            assert row["f1"] == pytest.approx(one[f"test/f1/{row['class']}"], abs=1e-6)


def test_resumed_two_process_run_continues(ddp_run, tiny) -> None:
    run_dir, _ = ddp_run
    run_two_processes([*tiny, *ODD, "trainer.max_epochs=2", "resume=auto"], run_dir)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    # 8 images, batch 4 per rank, 2 ranks: one step per epoch
    assert last["global_step"] == 2
    assert [p.name for p in run_dir.parent.iterdir()] == ["run"]
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["epoch"] for r in rows if r.get("val/f1_mean")} == {"0", "1"}


def test_a_run_resumed_from_an_epoch_end_repeats_every_rank(tiny, tmp_path: Path) -> None:
    """Rank 1 draws its own augmentations; restarted from rank 0's saved state it would draw
    others, and the averaged gradients of epoch 2 (so the weights) would differ."""
    both = [*tiny, *ODD, "trainer.max_epochs=2", "callbacks.model_checkpoint.save_top_k=-1",
            "test=false"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_two_processes(both, straight)
    first = straight / "checkpoints" / "epoch_000.ckpt"
    run_two_processes([*both, f"ckpt_path={first}"], resumed)
    a = torch.load(straight / "checkpoints" / "epoch_001.ckpt", weights_only=False)
    b = torch.load(resumed / "checkpoints" / "epoch_001.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 2
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
