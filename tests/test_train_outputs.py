"""What a training run writes and logs, read as a user reads it: an absent class has no
score (as in eval's report), W&B pictures and tables sit at their scores' step, and
options a callback cannot use are refused before the run starts."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger

from faceparse.labels import get_scheme
from faceparse.train import refuse_lr_monitor_without_logger
from faceparse.training.callbacks import PredictionImages, ScoreReport, score_rows
from faceparse.training.wandb_media import WandbMedia, scores_step

SCHEME = get_scheme("ourface")


def test_an_absent_class_has_no_score_not_a_zero(tmp_path: Path) -> None:
    metrics = {"test/f1/hair": 0.5, "test/iou/hair": 0.25, "test/f1_mean": 0.5}
    rows, _ = score_rows(metrics, SCHEME)
    by_class = {row["class"]: row for row in rows}
    assert (by_class["hair"]["f1"], by_class["hair"]["iou"]) == (0.5, 0.25)
    assert (by_class["accessory"]["present"], by_class["accessory"]["f1"],
            by_class["accessory"]["iou"]) == (False, None, None)
    trainer = SimpleNamespace(callback_metrics=metrics, precision="32-true")
    ScoreReport(tmp_path, "ourface").on_test_end(trainer, None)
    with open(tmp_path / "scores.csv", newline="") as f:
        written = {row["class"]: row for row in csv.DictReader(f)}
    assert (written["accessory"]["f1"], written["hair"]["f1"]) == ("", "0.5")


def test_media_are_logged_at_the_step_of_their_scores() -> None:
    """At an epoch's end validation runs before its last step counts in global_step;
    Lightning logs the scores at the batches that stepped so far."""
    loop = SimpleNamespace(_batches_that_stepped=3)
    trainer = SimpleNamespace(global_step=4, fit_loop=SimpleNamespace(epoch_loop=loop))
    assert scores_step(trainer) == 3


@pytest.mark.parametrize("make", [
    lambda n: PredictionImages("unused", "ourface", num_images=n),
    lambda n: WandbMedia("ourface", num_images=n),
], ids=["prediction_images", "wandb_media"])
def test_a_callback_showing_no_image_is_refused_at_start(make) -> None:
    with pytest.raises(ValueError, match=r"num_images=0: the number of images shown is a "
                                         r"whole number >= 1"):
        make(0)
    assert make(2).num_images == 2


def test_a_learning_rate_monitor_without_a_logger_is_refused() -> None:
    with pytest.raises(ValueError, match=r"callbacks.lr_monitor logs the learning rates to a "
                                         r"logger, and this run has none"):
        refuse_lr_monitor_without_logger([LearningRateMonitor()], [])
    refuse_lr_monitor_without_logger([LearningRateMonitor()], [CSVLogger("unused")])
    refuse_lr_monitor_without_logger([], [])


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_a_run_without_a_logger_is_one_line_and_no_folder(tiny, tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "faceparse.train", *tiny, "~logger",
                           f"hydra.run.dir={run}"], capture_output=True, text=True,
                          timeout=600)
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-2000:]
    assert "~callbacks.lr_monitor" in lines[0] and "Traceback" not in done.stderr
    assert not run.exists()
