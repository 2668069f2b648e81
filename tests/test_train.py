"""End-to-end: tiny synthetic runs through the real entry point write what users expect."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from faceparse.train import train

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
TINY = [
    "encoder.cnn.arch=vgg11_bn",
    "encoder.vit.size=small",
    "decoder.decoder_channels=32",
    "data.image_size=32",
    "data.batch_size=4",
    "data.dataset.sizes={train: 8, val: 4, test: 4}",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.log_every_n_steps=1",
]


def compose_tiny(tmp_path: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=TINY + overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # the run's own config, as @hydra.main hands it over
        cfg.paths.output_dir = str(tmp_path)
        cfg.paths.root_dir = str(tmp_path)
    return cfg


def test_train_writes_checkpoints_metrics_and_pictures(tmp_path: Path) -> None:
    cfg = compose_tiny(tmp_path, [])
    metrics = train(cfg)

    assert 0.0 <= metrics["val/f1_mean"] <= 1.0
    assert 0.0 <= metrics["test/f1_mean"] <= 1.0
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in ckpts and "epoch_000.ckpt" in ckpts
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert any(k.startswith("net.decoder.final_conv") for k in state["state_dict"])

    assert (tmp_path / "config_resolved.yaml").read_text().count("${") == 0
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("val/f1_mean") for r in rows) and any(r.get("train/loss") for r in rows)
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["scheme"] == "ourface" and len(scores["classes"]) == 11
    assert (tmp_path / "predictions" / "test.png").stat().st_size > 0
    assert list((tmp_path / "predictions").glob("val_epoch000.png"))


def test_training_is_repeatable_with_a_seed(tmp_path: Path) -> None:
    runs = [
        train(compose_tiny(tmp_path / str(i), ["test=false", "callbacks=none"]))
        for i in range(2)
    ]
    assert runs[0]["train/loss"] == pytest.approx(runs[1]["train/loss"], rel=1e-5)


@pytest.mark.parametrize(
    "experiment", sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
)
def test_every_experiment_runs_from_the_command_line(tmp_path: Path, experiment: str) -> None:
    """The real CLI (Hydra main) on each experiment, shrunk to a couple of batches."""
    cmd = [
        sys.executable, "-m", "faceparse.train", f"experiment={experiment}", *TINY,
        "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1", f"hydra.run.dir={tmp_path}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert "val/f1_mean" in (tmp_path / "csv" / "metrics.csv").read_text()
