"""End-to-end: tiny synthetic runs through the real entry point write what users expect."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from faceparse.cli import CONF_DIR
from faceparse.train import train

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def run_cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "faceparse.train", *args, f"hydra.run.dir={tmp_path}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_train_writes_checkpoints_metrics_and_pictures(compose, tiny, tmp_path: Path) -> None:
    metrics = train(compose(tiny, output_dir=tmp_path))

    assert 0.0 <= metrics["val/f1_mean"] <= 1.0
    assert 0.0 <= metrics["test/f1_mean"] <= 1.0
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in ckpts and "epoch_000.ckpt" in ckpts
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert any(k.startswith("net.decoder.final_conv") for k in state["state_dict"])
    # the training size travels with the weights: inference runs at it by default
    assert state["faceparse"]["image_size"] == compose(tiny).data.image_size

    assert (tmp_path / "config_resolved.yaml").read_text().count("${") == 0
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("val/f1_mean") for r in rows) and any(r.get("train/loss") for r in rows)
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["scheme"] == "ourface" and len(scores["classes"]) == 11
    assert scores["precision"] == str(compose(tiny).trainer.precision)  # the CPU's policy
    # the score files hold the logged test scores, class by class
    assert scores["f1_mean"] == pytest.approx(metrics["test/f1_mean"])
    for row in scores["classes"]:
        key = f"test/f1/{row['class']}"
        assert row["present"] == (key in metrics)
        if row["present"]:
            assert row["f1"] == pytest.approx(metrics[key])
    assert (tmp_path / "predictions" / "test.png").stat().st_size > 0
    assert list((tmp_path / "predictions").glob("val_epoch000.png"))


def test_training_is_repeatable_with_a_seed(compose, tiny, tmp_path: Path) -> None:
    runs = [
        train(compose([*tiny, "test=false", "callbacks=none"], output_dir=tmp_path / str(i)))
        for i in range(2)
    ]
    assert runs[0]["train/loss"] == pytest.approx(runs[1]["train/loss"], rel=1e-5)


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_testing_a_given_checkpoint_tests_those_weights(compose, tiny, tmp_path: Path) -> None:
    """``train=false ckpt_path=...`` scores that checkpoint, never the random weights the
    config would build, and without ``ckpt_path`` it refuses."""
    trained = train(compose([*tiny, "trainer.max_epochs=2"], output_dir=tmp_path / "run"))
    (best,) = (tmp_path / "run" / "checkpoints").glob("epoch_*.ckpt")
    tested = train(compose([*tiny, "train=false", f"ckpt_path={best}"],
                           output_dir=tmp_path / "test"))
    # the loss tells weights apart even where a tiny model's F1 does not
    for key in ("test/loss", "test/f1_mean", "test/pixel_acc"):
        assert tested[key] == pytest.approx(trained[key], abs=1e-6), key
    fresh = train(compose([*tiny, "trainer.max_epochs=0", "callbacks=none"],
                          output_dir=tmp_path / "fresh"))
    assert fresh["test/loss"] != pytest.approx(trained["test/loss"], abs=1e-3)
    scores = json.loads((tmp_path / "test" / "scores.json").read_text())
    assert scores["f1_mean"] == pytest.approx(tested["test/f1_mean"])
    with pytest.raises(ValueError, match="ckpt_path="):
        train(compose([*tiny, "train=false"], output_dir=tmp_path / "none"))


@pytest.mark.parametrize(("override", "message"), [
    ("data.labels=nope", "data.labels=nope: unknown label scheme 'nope'; choose one of"),
    ("data.batch_size=0", "data.batch_size=0: a batch holds a positive whole number"),
    ("data.eval_batch_size=-2", "data.eval_batch_size=-2: a batch holds a positive"),
    ("data.batch_size=1", r"data.batch_size=1: training normalises .* at least 2 samples"),
    ("scheduler.min_lr_ratio=-1", r"^scheduler.min_lr_ratio=-1: use a number with 0 <= "
                                  r"min_lr_ratio <= 1$"),
    ("scheduler.min_lr_ratio=5", r"scheduler.min_lr_ratio=5: use a number"),
    ("scheduler.warmup_fraction=1.0", r"scheduler.warmup_fraction=1.0: use a number with 0 "
                                      r"<= warmup_fraction < 1"),
    ("scheduler.warmup_fraction=-0.5", r"scheduler.warmup_fraction=-0.5"),
    ("optimizer.lr=abc", r"optimizer.lr='abc': use a positive number"),
    ("data.image_size=40", r"data.image_size=40: not a multiple of 16 .* data.image_size=48"),
    ("data.augment.hflip=2", r"data.augment.hflip=2: a probability, from 0 to 1"),
    ("+vit.foo=1", r"DinoVitEncoder.__init__\(\) got an unexpected keyword argument 'foo'"),
    ("data.dataset.sizes=5", r"data.dataset.sizes=5: give the faces of each split as whole"),
])
def test_bad_option_values_are_refused_by_name(compose, tiny, tmp_path: Path, override: str,
                                               message: str) -> None:
    with pytest.raises(ValueError, match=message):
        train(compose([*tiny, override], output_dir=tmp_path))


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_a_refused_command_prints_one_error_line(tiny, tmp_path: Path) -> None:
    """A bad option is one ``error:`` line (exit 1), no traceback; status.json records it."""
    result = run_cli([*tiny, "data.batch_size=0"], tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors == ["error: data.batch_size=0: a batch holds a positive whole number of "
                      "samples, e.g. data.batch_size=8"]
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "failed" and "data.batch_size=0" in status["error"]


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_missing_data_is_refused_before_there_is_a_run(tiny, tmp_path: Path) -> None:
    """A real dataset that is not on disk: one error line naming what is missing and where
    to get it, and no run folder left behind (the folder is Hydra's, made for this run)."""
    run = tmp_path / "run"
    shrunk = [o for o in tiny if not o.startswith("data.dataset.sizes")]  # synthetic's own
    result = run_cli([*shrunk, "data=lapa", f"data.root={tmp_path / 'LaPa'}"], run)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "\nerror: LaPa train split: missing under data.root=" in result.stderr
    assert "github.com/jd-opensource/lapa-dataset" in result.stderr  # where to get it
    assert not run.exists()


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_from_the_command_line(tiny, tmp_path: Path,
                                                     experiment: str) -> None:
    """The real CLI (Hydra main) on each experiment, shrunk to a couple of batches."""
    result = run_cli([f"experiment={experiment}", *tiny, "+trainer.limit_train_batches=2",
                      "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert "val/f1_mean" in (tmp_path / "csv" / "metrics.csv").read_text()
    assert json.loads((tmp_path / "scores.json").read_text())["scheme"] == "ourface"


@pytest.mark.slow  # a whole command, end to end: in CI's slow suite
def test_debug_fdr_runs_from_the_command_line(tiny, tmp_path: Path) -> None:
    """``debug=fdr`` (README): one batch of each stage; no best checkpoint is chosen."""
    result = run_cli(["debug=fdr", *tiny], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "checkpoints").exists()  # no one-batch last.ckpt for resume=auto
    assert json.loads((tmp_path / "scores.json").read_text())["scheme"] == "ourface"
    assert "val/f1_mean (last validation) = " in result.stdout + result.stderr


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_the_default_model_without_dinov3_weights_is_refused_from_the_cli(tmp_path: Path) -> None:
    result = run_cli(["trainer.max_epochs=1", "data.image_size=32"], tmp_path)
    assert result.returncode != 0
    assert "facebookresearch/dinov3" in result.stderr and "vit.weights=" in result.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_a_batch_of_one_trains_without_the_pooled_attention(compose, tiny, tmp_path: Path
                                                            ) -> None:
    """The refusal's advice holds: without attention refinement every BatchNorm normalises
    a spatial map, which one sample fills."""
    metrics = train(compose([*tiny, "data.batch_size=1", "decoder.attention_refinement=false",
                             "test=false"], output_dir=tmp_path))
    assert 0.0 <= metrics["val/f1_mean"] <= 1.0


def test_callbacks_none_saves_no_checkpoint_anywhere(compose, tiny, tmp_path: Path) -> None:
    """Lightning's own checkpoint went under the logger's folder, where resume= never
    looks; callbacks=none now means no checkpoint."""
    train(compose([*tiny, "test=false", "callbacks=none"], output_dir=tmp_path))
    assert (tmp_path / "csv" / "metrics.csv").is_file()
    assert list(tmp_path.rglob("*.ckpt")) == []
