"""``python -m faceparse.eval`` and ``python -m faceparse.export`` as a user runs them."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from faceparse.checkpoints import checkpoint_metadata
from faceparse.deploy import load_onnx_parser
from faceparse.labels import get_scheme

pytestmark = pytest.mark.slow
SMALL_DATA = ("data.image_size=32", "data.dataset.sizes={train: 1, val: 1, test: 3}")


@pytest.fixture(scope="module")
def checkpoint(compose, tiny, tmp_path_factory) -> Path:
    """A tiny dual-encoder (VGG11 + DINOv3 ViT-S) checkpoint in our format, trained at 32 px."""
    torch.manual_seed(0)
    net = instantiate(compose(tiny).model.net)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "faceparse": checkpoint_metadata(net.config, get_scheme("ourface"), 32)}, path)
    return path


def run(command: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"faceparse.{command}", *args],
                          capture_output=True, text=True, timeout=300)


def test_eval_writes_a_report_with_its_protocol(checkpoint: Path, tmp_path: Path) -> None:
    result = run("eval", f"ckpt={checkpoint}", *SMALL_DATA, "tta.flip=true",
                 "tta.scales=[1.0,1.5]", "resolution=original", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "metrics.json").read_text())
    protocol = report["protocol"]
    assert protocol["samples"] == 3 and protocol["split"] == "test"
    assert protocol["dataset_labels"] == "facesynthetics" and protocol["scored_labels"] == "ourface"
    assert protocol["resolution"] == "original" and protocol["image_size"] == 32
    assert "flip" in protocol["tta"] and "1.5" in protocol["tta"]
    assert len(protocol["checkpoint_sha256"]) == 64
    assert 0.0 <= report["f1_mean"] <= 1.0 and len(report["per_class"]) == 11
    assert len(report["worst_images"]) == 3
    for name in ("metrics.csv", "confusion.png", "worst_images.png", "protocol.txt"):
        assert (tmp_path / name).stat().st_size > 0
    with (tmp_path / "metrics.csv").open() as handle:
        rows = {row["class"]: row for row in csv.DictReader(handle)}
    assert float(rows["miou"]["iou"]) == pytest.approx(report["miou"], abs=1e-9)
    assert float(rows["pixel_acc"]["pixel_acc"]) == pytest.approx(report["pixel_acc"], abs=1e-9)
    assert "f1_mean" in result.stdout  # the terminal table


def test_eval_of_a_run_folder_scores_the_runs_own_test_split(checkpoint: Path, compose,
                                                             tmp_path: Path) -> None:
    """``eval ckpt=<run>`` with no data= scores the test split the run made (its sizes and
    render size), and the protocol says where the data options came from."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "epoch_003.ckpt").write_bytes(checkpoint.read_bytes())
    data = compose(["data.image_size=32", "data.dataset.sizes={train: 1, val: 1, test: 2}"]).data
    (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml({"data": data}))
    result = run("eval", f"ckpt={run_dir}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert result.returncode == 0, result.stderr[-3000:]
    protocol = json.loads((tmp_path / "eval" / "metrics.json").read_text())["protocol"]
    assert protocol["samples"] == 2 and protocol["data_options"]["render_size"] == 32
    assert protocol["data_from"] == f"the run's {run_dir / 'config_resolved.yaml'}"
    assert "Data options from the run's" in protocol["text"]


@pytest.mark.parametrize(("args", "message"), [
    (("split=holdout",), "unknown split 'holdout'"),
    (("data.labels=celebamask",), "predicts 11 'ourface' classes but data.labels=celebamask"),
    (("fast_path.compile_mode=fastest",), "fast_path.compile_mode='fastest': use one of"),
    (("tta.scales=[abc]",), "error: tta.scales=[abc]: the input scale factors are positive"),
    (("tta.flip=no",), "error: tta.flip=no: use true or false"),
])
def test_eval_bad_input_is_one_clear_line(checkpoint: Path, tmp_path: Path, args, message
                                          ) -> None:
    """One line naming the option; ``out=`` is made only for a report, never left empty."""
    out = tmp_path / "report"
    result = run("eval", f"ckpt={checkpoint}", *SMALL_DATA, *args, f"out={out}",
                 f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0 and message in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_export_writes_an_onnx_file_that_passed_parity(checkpoint: Path, tmp_path: Path
                                                       ) -> None:
    out = tmp_path / "model.onnx"
    result = run("export", f"ckpt={checkpoint}", f"out={out}", "dynamic=true",
                 f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    parity = json.loads(Path(f"{out}.parity.json").read_text())
    assert [p["size"] for p in parity["parity"]] == [32, 64]  # dynamic: a second size too
    assert all(p["passed"] and p["max_abs_diff"] <= 1e-3 for p in parity["parity"])
    parser = load_onnx_parser(out)
    assert parser.image_size == 32 and parser.scheme.name == "ourface"
    assert "argmax agreement" in (tmp_path / "run" / "export.log").read_text()


def test_export_refuses_an_unknown_format(checkpoint: Path, tmp_path: Path) -> None:
    result = run("export", f"ckpt={checkpoint}", f"out={tmp_path / 'm.tfl'}", "format=tflite",
                 f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0 and "format=tflite is unknown" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "m.tfl").exists()


def test_bad_output_locations_are_refused_before_the_work(checkpoint: Path, tmp_path: Path
                                                         ) -> None:
    """``out=`` a folder for export, a file for eval: one line naming it, nothing exported."""
    result = run("export", f"ckpt={checkpoint}", f"out={tmp_path}", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0 and f"out={tmp_path} is a folder" in result.stderr
    assert "Traceback" not in result.stderr and "parity" not in result.stderr
    taken = tmp_path / "report.txt"
    taken.write_text("kept")
    result = run("eval", f"ckpt={checkpoint}", *SMALL_DATA, f"out={taken}",
                 f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode != 0 and f"out={taken} is a file" in result.stderr
    assert "Traceback" not in result.stderr and taken.read_text() == "kept"
