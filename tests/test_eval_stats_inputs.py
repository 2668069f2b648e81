"""``eval`` and ``stats`` options and inputs: refused by name before any work, and what a
refused or repeated eval leaves in ``out=``; ``stats`` weights a training run can use."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import faceparse.eval as eval_mod
import faceparse.stats as stats_mod
from faceparse.data.stats import class_weights
from faceparse.eval import evaluate
from faceparse.labels import get_scheme
from faceparse.stats import stats

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SMALL = ("data.image_size=32", "data.num_workers=0",
         "data.dataset.sizes={train: 2, val: 1, test: 1}")


def _no_work(*_args, **_kwargs):
    raise AssertionError("the option should have been refused before this")


@pytest.mark.parametrize(("override", "message"), [
    ("tta.scales=[abc]", r"^tta\.scales=\[abc\]: .*positive numbers"),
    ("tta.scales=[1.0,-2]", r"^tta\.scales=\[1\.0,-2\]: .*positive numbers"),
    ("tta.scales=abc", r"^tta\.scales=abc: "),
    ("tta.flip=no", r"^tta\.flip=no: use true or false"),
    ("tta.flip=1", r"^tta\.flip=1: use true or false"),
    ("use_prepared=no", r"^use_prepared=no: use true or false"),
    ("trust_pickle=no", r"^trust_pickle=no: use true or false"),
    ("run_data=off", r"^run_data=off: use true or false"),
    ("worst=abc", r"^worst=abc: .*whole number >= 0"),
    ("worst=-1", r"^worst=-1: .*whole number >= 0"),
    ("worst=2.5", r"^worst=2\.5: .*whole number >= 0"),
    ("image_size=abc", r"^image_size=abc: .*whole number"),
    ("image_size=0", r"^image_size=0: .*whole number"),
    ("resolution=full", r"^resolution=full: choose model or original"),
])
def test_eval_options_are_refused_by_name_before_the_checkpoint_is_read(
        compose, monkeypatch, tmp_path: Path, override: str, message: str) -> None:
    monkeypatch.setattr(eval_mod, "locate_checkpoint", _no_work)
    out = tmp_path / "report"
    with pytest.raises(ValueError, match=message):
        evaluate(compose(["ckpt=x.ckpt", f"out={out}", override], config="eval"))
    assert not out.exists()


def test_a_single_tta_scale_is_a_list_of_one(compose, ckpt: Path, tmp_path: Path) -> None:
    """``tta.scales=1.5`` (no brackets) scores at 1.5, as ``[1.5]`` would."""
    cfg = compose([f"ckpt={ckpt}", *SMALL, "tta.scales=1.5", "worst=0",
                   f"out={tmp_path / 'report'}"], config="eval")
    report = evaluate(cfg)
    assert report["protocol"]["tta"] == "scales [1.5] (48 px) (logits averaged)"


@pytest.mark.parametrize(("scales", "message"), [
    ("[0.9,1.0,1.1]", r"tta.scales=\[0.9, 1.0, 1.1\] at image_size=32 run at 32, 32, 32 px "
                      r"\(sides round to multiples of 16\): 0.9 and 1.0 would be the same pass"),
    ("1.25", "1.25 would run at the input size"),
])
def test_tta_scales_that_round_to_one_pass_are_refused(compose, ckpt: Path, tmp_path: Path,
                                                       scales: str, message: str) -> None:
    """They ran the same 32 px pass three times, and the protocol said multi-scale."""
    cfg = compose([f"ckpt={ckpt}", *SMALL, f"tta.scales={scales}", "worst=0",
                   f"out={tmp_path / 'report'}"], config="eval")
    with pytest.raises(ValueError, match=message):
        evaluate(cfg)
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("override", ["split=holdout", "data.labels=celebamask"])
def test_a_refused_eval_leaves_no_new_out_folder(compose, ckpt: Path, tmp_path: Path,
                                                 override: str) -> None:
    out = tmp_path / "new" / "report"
    with pytest.raises((ValueError, KeyError)):
        evaluate(compose([f"ckpt={ckpt}", *SMALL, f"out={out}", override], config="eval"))
    assert not (tmp_path / "new").exists()


def test_eval_into_a_used_out_folder_removes_the_earlier_worst_images(
        compose, ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    evaluate(compose([f"ckpt={ckpt}", *SMALL, f"out={out}", "worst=1"], config="eval"))
    assert (out / "worst_images.png").is_file()
    evaluate(compose([f"ckpt={ckpt}", *SMALL, f"out={out}", "worst=0"], config="eval"))
    assert not (out / "worst_images.png").exists() and (out / "metrics.json").is_file()


def test_unseen_classes_get_the_largest_seen_weight() -> None:
    from faceparse.data.stats import training_weights

    counts = np.array([900, 90, 0, 10])
    weights = training_weights(counts, power=1.0)
    seen = class_weights(counts, power=1.0)
    assert weights[2] == pytest.approx(seen.max()) and weights[2] > 0
    assert weights[[0, 1, 3]] == pytest.approx(seen[[0, 1, 3]])


@pytest.mark.parametrize(("override", "message"), [
    ("max_samples=abc", r"^max_samples=abc: .*whole number >= 1"),
    ("max_samples=0", r"^max_samples=0: .*whole number >= 1"),
    ("max_samples=2.5", r"^max_samples=2\.5: .*whole number >= 1"),
    ("weight_power=abc", r"^weight_power=abc: .*number >= 0"),
    ("weight_power=-1", r"^weight_power=-1: .*number >= 0"),
])
def test_stats_options_are_refused_by_name_before_counting(
        compose, monkeypatch, override: str, message: str) -> None:
    monkeypatch.setattr(stats_mod, "open_data_module", _no_work)
    monkeypatch.setattr(stats_mod, "count_classes", _no_work)
    with pytest.raises(ValueError, match=message):
        stats(compose([override], config="stats"))


def test_stats_of_a_subsample_weights_the_classes_it_did_not_see(
        compose, capsys, caplog) -> None:
    """A class missing from ``max_samples`` faces is rare, not absent: weight 0 would make
    training with the printed override never learn it."""
    cfg = compose([*SMALL, "max_samples=1", "data.dataset.sizes={train: 3, val: 1, test: 1}"],
                  config="stats")
    with caplog.at_level(logging.WARNING):
        weights, override = stats(cfg)
    printed = capsys.readouterr().out
    assert "never labelled" not in printed and "not in the 1 samples counted" in printed
    assert min(weights) > 0 and "loss.class_weights=[" in override
    assert ",0," not in override and ",0]" not in override
    assert "not in the 1 samples counted" in caplog.text


class _Split:
    """A datamodule whose split holds ``masks`` (readers refuse most empty splits
    themselves; this is the one that does not)."""

    def __init__(self, masks: list[np.ndarray]) -> None:
        self.masks, self.scheme = masks, get_scheme("ourface")

    def open_dataset(self, split: str) -> list[dict[str, np.ndarray]]:
        return [{"mask": m} for m in self.masks]


@pytest.mark.parametrize(("masks", "message"), [
    ([], r"^split=val of data=list has no samples"),
    ([np.full((4, 4), 255, np.uint8)], r"^split=val of data=list: the 1 samples counted have "
                                       r"no labelled pixel"),
])
def test_stats_with_nothing_to_count_is_refused(compose, monkeypatch, masks, message) -> None:
    """All-zero weights would train with a 0/0 loss."""
    monkeypatch.setattr(stats_mod, "open_data_module", lambda _cfg: _Split(masks))
    with pytest.raises(ValueError, match=message):
        stats(compose(["split=val", "data.num_workers=0"], config="stats"))


@pytest.mark.slow
def test_stats_bad_option_is_one_clear_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "faceparse.stats", "weight_power=abc",
         f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr[-2000:]
    assert re.search(r"^error: weight_power=abc: ", result.stderr, re.M)
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


@pytest.mark.slow  # a whole command end to end (10-17 s): in CI's slow suite
def test_samples_prepare_skipped_count_as_bad_in_the_protocol(compose, ckpt: Path,
                                                              dataset_copies, tmp_path: Path
                                                              ) -> None:
    """A val image prepare could not read is not in the prepared copy: scored from the
    copy, the protocol still counts it among the bad samples, as it does from the raw files
    (it used to say "0 bad samples skipped")."""
    import shutil

    from faceparse.data.prepare import prepare_dataset
    from faceparse.data.readers.lapa import LaPa

    root = tmp_path / "LaPa"
    shutil.copytree(dataset_copies["lapa"][0], root)
    broken = root / "val" / "images" / "1003_val.jpg"
    broken.write_bytes(broken.read_bytes()[:200])  # truncated: unreadable
    prepare_dataset(lambda split: LaPa(split, root), root / "prepared_32", 32, ["val"],
                    workers=0)
    args = [f"ckpt={ckpt}", "data=lapa", f"data.root={root}", "data.image_size=32",
            "data.num_workers=0", "split=val", "labels=ourface", "worst=0"]
    protocols = [evaluate(compose([*args, f"use_prepared={used}", f"out={tmp_path / used}"],
                                  config="eval"))["protocol"] for used in ("true", "false")]
    assert [p["source"] for p in protocols] == ["prepared copy", "original files"]
    for protocol in protocols:
        assert (protocol["samples"], protocol["skipped_count"]) == (1, 1), protocol
    assert protocols[0]["skipped"] == ["1003_val (skipped by prepare as unreadable)"]


def test_labels_the_classes_cannot_be_mapped_to_names_the_option(compose, ckpt: Path,
                                                                 tmp_path: Path) -> None:
    """The refusal named two schemes and neither option."""
    cfg = compose([f"ckpt={ckpt}", *SMALL, "labels=lapa", f"out={tmp_path / 'report'}"],
                  config="eval")
    with pytest.raises(ValueError, match=r"^labels=lapa: the checkpoint's 'ourface' predictions "
                                         r"cannot be scored in it \(no mapping from label "
                                         r"scheme 'ourface' to 'lapa'"):
        evaluate(cfg)
    assert not (tmp_path / "report").exists()


def test_class_weights_at_the_default_power_match_hand_values() -> None:
    """Median-frequency weights to the power 0.5: frequencies 0.9, 0.09, 0.01, median 0.09,
    weights sqrt(0.09 / f) = 1/sqrt(10), 1, 3."""
    np.testing.assert_allclose(class_weights(np.array([900, 90, 10])),
                               [10 ** -0.5, 1.0, 3.0], rtol=1e-12)
    np.testing.assert_allclose(class_weights(np.array([900, 90, 10]), power=1.0),
                               [0.1, 1.0, 9.0], rtol=1e-12)


def test_the_weight_power_option_reaches_the_weights(compose) -> None:
    """``weight_power=1`` squares the default square-root weights (it was never run)."""
    half, _ = stats(compose([*SMALL], config="stats"))
    full, _ = stats(compose([*SMALL, "weight_power=1"], config="stats"))
    np.testing.assert_allclose(full, np.square(half), rtol=1e-6)
    assert not np.allclose(full, half)
