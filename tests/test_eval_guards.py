"""``eval``'s data options refused in one line before the checkpoint is read, a ``strict``
bad sample named in one line from a loader worker, and what the protocol says of the
resolution, ``vit_weights=`` and a typed ``data.image_size``."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import faceparse.eval as eval_mod
from faceparse.data.io import BadSampleError
from faceparse.eval import DataSource, evaluate

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SMALL = ("data.image_size=32", "data.num_workers=0",
         "data.dataset.sizes={train: 1, val: 1, test: 1}", "worst=0")


def _no_work(*_args, **_kwargs):
    raise AssertionError("the option should have been refused before this")


def _bad_folder(root: Path) -> Path:
    """A split folder (16 px, ourface ids) whose test mask p0 is not an image."""
    from test_stats_report_fixes import write_split_folder

    write_split_folder(root, split="test", bad=0)
    return root


def _run_folder(tmp_path: Path, ckpt: Path, config: str) -> Path:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "epoch_000.ckpt").write_bytes(ckpt.read_bytes())
    (run / "config_resolved.yaml").write_text(config)
    return run


@pytest.mark.parametrize(("override", "message"), [
    ("data.root=/tmp/faces", r"^data\.root=/tmp/faces is set but .*reads no files: add "
                             r"data=<celebamask\|lapa\|facesynthetics\|helen\|folder>$"),
    ("data.eval_batch_size=0", r"^data\.eval_batch_size=0: a batch holds a positive"),
    ("data.batch_size=abc", r"^data\.batch_size=abc: a batch holds a positive"),
    ("data.num_workers=abc", r"^data\.num_workers=abc: .*whole number >= 0"),
    ("data.labels=nosuch", r"^data\.labels=nosuch: unknown label scheme"),
    ("vit_weights=/nonexistent/dinov3.pth", r"^vit_weights=/nonexistent/dinov3\.pth: no such"),
])
def test_eval_data_options_are_refused_before_the_checkpoint_is_read(
        compose, ckpt: Path, monkeypatch, tmp_path: Path, override: str, message: str
) -> None:
    monkeypatch.setattr(eval_mod, "read_checkpoint", _no_work)
    cfg = compose([f"ckpt={ckpt}", f"out={tmp_path / 'out'}", override],
                  config="eval")
    with pytest.raises((ValueError, KeyError, FileNotFoundError)) as caught:
        evaluate(cfg, ["ckpt", override.split("=")[0]])
    assert re.search(message, caught.value.args[0]), caught.value.args[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("text", "message"), [
    ("data: [unclosed\n", r"config_resolved\.yaml cannot be read as a config"),
    ("data:\n  labels: ourface\n", r"config_resolved\.yaml: its data config lacks _target_"),
    ("trainer: {}\n", r"config_resolved\.yaml has no data config"),
])
def test_a_damaged_run_config_is_one_error_naming_the_file(
        compose, ckpt: Path, monkeypatch, tmp_path: Path, text: str, message: str) -> None:
    monkeypatch.setattr(eval_mod, "read_checkpoint", _no_work)
    run = _run_folder(tmp_path, ckpt, text)
    with pytest.raises(ValueError, match=message) as caught:
        evaluate(compose([f"ckpt={run}", f"out={tmp_path / 'out'}"], config="eval"), ["ckpt"])
    assert str(run) in str(caught.value) and "\n" not in str(caught.value)


def test_strict_eval_with_a_worker_raises_the_bad_files_own_error(
        compose, ckpt: Path, tmp_path: Path) -> None:
    root = _bad_folder(tmp_path / "ds")
    cfg = compose([f"ckpt={ckpt}", "data=folder", f"data.root={root}",
                   "data.dataset.prepared_dir=null", "data.dataset.strict=true",
                   "data.num_workers=1", "device=cpu", "worst=0", f"out={tmp_path / 'out'}"],
                  config="eval")
    with pytest.raises(BadSampleError) as caught:
        evaluate(cfg, ["ckpt", "data"])
    message = str(caught.value)
    assert "p0.png" in message and "\n" not in message and "Caught" not in message


def test_vit_weights_for_a_checkpoint_holding_its_vit_is_not_used(
        compose, ckpt: Path, tmp_path: Path, caplog) -> None:
    unused = tmp_path / "dinov3.pth"
    unused.write_bytes(b"not read")
    cfg = compose([f"ckpt={ckpt}", f"vit_weights={unused}", *SMALL, "device=cpu",
                   f"out={tmp_path / 'out'}"], config="eval")
    with caplog.at_level(logging.WARNING):
        report = evaluate(cfg, ["ckpt", "vit_weights"])
    assert f"vit_weights={unused} is not used" in caplog.text
    assert report["protocol"]["vit_weights"] is None


def test_a_typed_data_image_size_the_checkpoint_overrides_is_said_and_not_claimed(
        compose, ckpt: Path, tmp_path: Path, caplog) -> None:
    """The checkpoint's training size is the input size (README: ``image_size=`` sets it);
    the protocol must not say ``data.image_size`` came from the command line."""
    data = compose(["data.image_size=32", "data.num_workers=0",
                    "data.dataset.sizes={train: 1, val: 1, test: 1}"]).data
    run = _run_folder(tmp_path, ckpt, OmegaConf.to_yaml({"data": data}))
    cfg = compose([f"ckpt={run}", "data.image_size=64", "device=cpu", "worst=0",
                   f"out={tmp_path / 'out'}"], config="eval")
    with caplog.at_level(logging.WARNING):
        report = evaluate(cfg, ["ckpt", "data.image_size", "device", "worst", "out"])
    protocol = report["protocol"]
    assert protocol["image_size"] == 32 and "data.image_size" not in protocol["data_from"]
    assert protocol["data_from"] == f"the run's {run / 'config_resolved.yaml'}"
    assert "data.image_size=64 is not the input size" in caplog.text
    assert "image_size=64 scores at 64 px" in caplog.text


def test_a_data_source_without_a_key_drops_only_that_key() -> None:
    source = DataSource("the run's r/config_resolved.yaml", ("data.root", "data.image_size"),
                        from_run=True)
    assert source.without("data.image_size").describe() == \
        "the run's r/config_resolved.yaml, with data.root from the command line"
    assert DataSource("the run's r/c.yaml", ("data.image_size",)).without(
        "data.image_size").describe() == "the run's r/c.yaml"
    assert DataSource("the command line").without("data.image_size").describe() == \
        "the command line"


def test_original_resolution_scores_at_each_masks_size(compose, ckpt: Path,
                                                       tmp_path: Path) -> None:
    """CelebAMask-HQ's images are twice its masks' size (here 128 and 64 px): scored at the
    masks', and the protocol says so."""
    import fixtures_data as fx

    root = tmp_path / "CelebAMask-HQ"
    masks = fx.write_celebamask(root, {2001: "test", 0: "train", 2: "val"})
    cfg = compose([f"ckpt={ckpt}", "data=celebamask", f"data.root={root}",
                   "data.dataset.prepared_dir=null", "data.num_workers=0", "device=cpu",
                   "resolution=original", "worst=0", f"out={tmp_path / 'out'}"],
                  config="eval")
    report = evaluate(cfg, ["ckpt", "data"])
    gt_pixels = sum(c["gt_pixels"] for c in report["per_class"].values())
    assert masks["2001"].shape == (64, 64) and gt_pixels == 64 * 64  # not the image's 128 px
    text = json.loads((tmp_path / "out" / "metrics.json").read_text())["protocol"]["text"]
    assert "each mask's own resolution (the image resized to its mask" in text


def _run_eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faceparse.eval", *args],
                          capture_output=True, text=True, timeout=300)


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "Error executing job" not in result.stderr
    return errors[0]


@pytest.mark.slow  # the command's own error line and run folder (a subprocess)
@pytest.mark.parametrize("override", ["data.root={tmp}", "data.eval_batch_size=0"])
def test_eval_refusals_are_one_line_and_leave_no_run_folder(ckpt: Path, tmp_path: Path,
                                                            override: str) -> None:
    result = _run_eval(f"ckpt={ckpt}", override.format(tmp=tmp_path), "device=cpu",
                       f"hydra.run.dir={tmp_path / 'run'}")
    line = _one_error_line(result)
    assert override.split("=")[0] in line and not (tmp_path / "run").exists()


@pytest.mark.slow  # the command's own error line (a subprocess with a loader worker)
def test_strict_eval_with_a_worker_is_one_line_naming_the_file(ckpt: Path,
                                                               tmp_path: Path) -> None:
    root = _bad_folder(tmp_path / "ds")
    result = _run_eval(f"ckpt={ckpt}", "data=folder", f"data.root={root}",
                       "data.dataset.prepared_dir=null", "data.dataset.strict=true",
                       "data.num_workers=1", "device=cpu", "worst=0",
                       f"hydra.run.dir={tmp_path / 'run'}")
    assert "p0.png" in _one_error_line(result)
