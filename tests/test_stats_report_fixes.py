"""``stats`` counts each readable sample once and reports the bad ones; its data options are
one-line errors; the sweep report shows swept values as typed and no 0 bar for a missing F1."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from faceparse.data.io import BadSampleError
from faceparse.data.stats import count_classes, training_weights, weights_override
from faceparse.reporting import plots
from faceparse.reporting.tables import _cell, write_markdown
from faceparse.stats import stats

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _masks(seed: int) -> list[np.ndarray]:
    """Three 16 px masks of ourface ids with different class counts."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 11, (16, 16), dtype=np.uint8) for _ in range(3)]


def write_split_folder(root: Path, split: str = "train", bad: int | None = 0) -> list[np.ndarray]:
    """``root/<split>/{images,masks}`` with three samples p0..p2, mask ``bad`` corrupt;
    val and test hold one good sample each. Returns the train masks written."""
    masks = _masks(0)
    for name in ("train", "val", "test"):
        for i, mask in enumerate(masks if name == split else masks[:1]):
            (root / name / "images").mkdir(parents=True, exist_ok=True)
            (root / name / "masks").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / name / "images" / f"p{i}.png"),
                        np.full((16, 16, 3), 40 * i, np.uint8))
            cv2.imwrite(str(root / name / "masks" / f"p{i}.png"), mask)
    if bad is not None:
        (root / split / "masks" / f"p{bad}.png").write_bytes(b"garbage")
    return masks


def _folder(root: Path, *extra: str) -> list[str]:
    return ["data=folder", f"data.root={root}", "data.dataset.scheme=ourface",
            "data.dataset.prepared_dir=null", "data.image_size=16", "data.num_workers=0", *extra]


def _counts(masks: list[np.ndarray]) -> np.ndarray:
    return sum(np.bincount(m.ravel(), minlength=11) for m in masks)


def test_stats_counts_each_good_sample_once_and_reports_the_bad(
        compose, tmp_path: Path, capsys) -> None:
    """The sample after a bad training sample used to count twice (training's stand-in)."""
    masks = write_split_folder(tmp_path / "ds")
    weights, override = stats(compose(_folder(tmp_path / "ds"), config="stats"))
    expected = training_weights(_counts(masks[1:]))
    assert weights == pytest.approx(expected.tolist())
    assert override == weights_override(expected)
    printed = capsys.readouterr().out
    assert "1 bad sample skipped, not counted" in printed
    assert f"'{override}'" in printed  # quoted: pasted into a shell, [...] is no glob


def test_count_classes_skips_a_bad_sample_and_counts_it(compose, tmp_path: Path) -> None:
    from hydra.utils import instantiate

    masks = write_split_folder(tmp_path / "ds", bad=1)
    data = instantiate(compose(_folder(tmp_path / "ds"), config="stats").data)
    counted = count_classes(data.open_dataset("train"), 11)
    assert counted.skipped == 1
    assert (counted.counts == _counts([masks[0], masks[2]])).all()


def test_strict_stats_with_a_worker_raises_the_bad_files_own_error(
        compose, tmp_path: Path) -> None:
    """Raised in the main process: not the DataLoader's "Caught ... in worker" text."""
    write_split_folder(tmp_path / "ds")
    cfg = compose(_folder(tmp_path / "ds", "data.dataset.strict=true", "data.num_workers=1"),
                  config="stats")
    with pytest.raises(BadSampleError) as caught:
        stats(cfg)
    message = str(caught.value)
    assert "p0.png" in message and "\n" not in message and "Caught" not in message


@pytest.mark.parametrize(("override", "message"), [
    ("data.root=/tmp/faces", r"^data\.root=/tmp/faces is set but .* add data=<celebamask\|lapa"
                             r"\|facesynthetics\|helen\|folder>"),
    ("data.batch_size=0", r"^data\.batch_size=0: a batch holds a positive whole number"),
    ("data.num_workers=abc", r"^data\.num_workers=abc: .*whole number >= 0"),
    ("data.labels=nosuch", r"^data\.labels=nosuch: unknown label scheme 'nosuch'"),
])
def test_stats_data_options_are_one_error_naming_them(compose, override: str,
                                                      message: str) -> None:
    with pytest.raises((ValueError, KeyError)) as caught:
        stats(compose([override], config="stats"))
    text = caught.value.args[0]
    assert re.search(message, text) and "\n" not in text


@pytest.mark.slow  # the command's own error line and run folder (a subprocess)
def test_stats_data_root_without_data_is_one_line_and_no_run_folder(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "faceparse.stats", f"data.root={tmp_path}",
         f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "add data=<" in errors[0]
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_report_cells_show_swept_values_as_typed_and_round_measured_ones() -> None:
    assert _cell("0.00012345") == "0.00012345" and _cell("0.00012346") == "0.00012346"
    assert _cell(0.123456789) == "0.1235" and _cell(math.nan) == "-"


def test_report_markdown_keeps_swept_strings(tmp_path: Path) -> None:
    rows = [{"job": "0", "status": "finished", "optimizer.lr": "0.00012345",
             "test/f1_mean": 0.876543, "error": ""}]
    text = write_markdown(rows, tmp_path / "report.md", "sweep")
    assert "| 0.00012345 |" in text and "| 0.8765 |" in text


def test_class_plot_leaves_out_a_missing_f1_and_marks_it(monkeypatch, tmp_path: Path) -> None:
    """A class absent from a job's test truth is "n/a", not a bar of F1 = 0."""
    bars: list[list[float]] = []
    texts: list[str] = []
    real_bar = plots.plt.Axes.bar
    real_text = plots.plt.Axes.text

    def spy_bar(self, x, height, *args, **kwargs):
        bars.append(list(height))
        return real_bar(self, x, height, *args, **kwargs)

    def spy_text(self, x, y, s, *args, **kwargs):
        texts.append(s)
        return real_text(self, x, y, s, *args, **kwargs)

    monkeypatch.setattr(plots.plt.Axes, "bar", spy_bar)
    monkeypatch.setattr(plots.plt.Axes, "text", spy_text)
    rows = [{"job": "1", "test/f1_mean": 0.9, "f1/skin": 0.9, "f1/hair": math.nan},
            {"job": "0", "test/f1_mean": 0.7, "f1/skin": 0.8, "f1/hair": 0.6}]
    path = plots.plot_classes(rows, tmp_path)
    assert path is not None and path.stat().st_size > 0
    assert bars[0][0] == 0.9 and math.isnan(bars[0][1]) and bars[1] == [0.8, 0.6]
    assert texts == ["n/a"]
