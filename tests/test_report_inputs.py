"""The sweep report on job folders it used to misread, and the status every job leaves.

Each case is one a real sweep produces: a sweep optimising a metric other than
``val/f1_mean`` (or a loss), jobs of two sweeps with other label schemes or precisions in
one folder, a Hydra delete override, a run_stats number that was not measured, an output
that cannot be written, and a job ended by SIGTERM, Ctrl-C or its launcher.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import OmegaConf

from faceparse.report import main as report_main
from faceparse.report import report
from faceparse.reporting import collect_jobs, swept_keys
from faceparse.training import job_status
from faceparse.training.job_status import record_job

STATS = {"params_total": 2_000_000, "params_trainable": 500_000,
         "train_images_per_s": 12.5, "peak_memory_mb": 900.0}


def write_job(sweep: Path, num: int | str, overrides: list[str], status: dict | None = None,
              f1: float | None = None, *, scheme: str = "ourface",
              precision: str = "32-true", metric_log: dict[str, list[float]] | None = None,
              config: dict | None = None, stats: dict | None = None) -> Path:
    """A job folder as Hydra, job_status and the callbacks leave it."""
    folder = sweep / str(num)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if config is not None:
        (folder / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(config))
    if status is not None:
        (folder / "status.json").write_text(json.dumps(status))
    if f1 is not None:
        classes = [{"class": "skin", "present": True, "f1": f1, "iou": f1 / 2}]
        (folder / "scores.json").write_text(json.dumps(
            {"scheme": scheme, "precision": precision, "f1_mean": f1, "miou": f1 / 2,
             "pixel_acc": 0.9, "classes": classes}))
    if stats is not None:
        (folder / "run_stats.json").write_text(json.dumps(stats))
    if metric_log:
        (folder / "csv").mkdir()
        names = list(metric_log)
        lines = [",".join(["epoch", *names])]
        lines += [",".join([str(i), *(str(metric_log[n][i]) for n in names)])
                  for i in range(len(metric_log[names[0]]))]
        (folder / "csv" / "metrics.csv").write_text("\n".join(lines) + "\n")
    return folder


def read_rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "report.csv", newline="") as f:
        return {r["job"]: r for r in csv.DictReader(f)}


# --- finding 2: val_best is each job's own optimized_metric, the right way up ---------------

def test_val_best_of_running_and_failed_jobs_is_the_sweeps_metric(tmp_path: Path) -> None:
    """A ``val/miou`` sweep: a running job's value is its best val/miou, not val/f1_mean;
    an older status without the metric takes it from the job's .hydra/config.yaml."""
    log = {"val/f1_mean": [0.9, 0.95], "val/miou": [0.2, 0.3]}
    write_job(tmp_path, 0, ["optimizer.lr=0.1"],
              {"status": "finished", "value": 0.31, "optimized_metric": "val/miou"}, 0.8)
    write_job(tmp_path, 1, ["optimizer.lr=0.2"],
              {"status": "running", "started": 1.0, "optimized_metric": "val/miou"},
              metric_log=log)
    write_job(tmp_path, 2, ["optimizer.lr=0.3"], {"status": "failed", "error": "x"},
              metric_log=log, config={"optimized_metric": "val/miou", "seed": 1})

    report(tmp_path, tmp_path / "out")

    rows = read_rows(tmp_path / "out")
    assert {n: float(rows[n]["val_best"]) for n in "012"} == pytest.approx(
        {"0": 0.31, "1": 0.3, "2": 0.3})
    assert "val_metric" not in rows["0"]  # one metric: named above the table
    text = (tmp_path / "out" / "report.md").read_text()
    assert "val_best: each job's highest val/miou" in text
    assert "**Warning:**" not in text


def test_a_loss_is_best_at_its_lowest(tmp_path: Path) -> None:
    write_job(tmp_path, 0, ["optimizer.lr=0.1"],
              {"status": "running", "started": 1.0, "optimized_metric": "val/loss"},
              metric_log={"val/loss": [0.9, 0.4, 0.6], "val/f1_mean": [0.1, 0.2, 0.3]})

    (job,) = collect_jobs(tmp_path)
    report(tmp_path)

    assert job.metric == "val/loss" and job.val_best == pytest.approx(0.4)
    assert "val_best: each job's lowest val/loss" in (tmp_path / "report.md").read_text()


def test_jobs_optimising_different_metrics_show_the_metric_per_row(tmp_path: Path,
                                                                 caplog) -> None:
    write_job(tmp_path / "a", 0, ["optimizer.lr=0.1"],
              {"status": "finished", "value": 0.31, "optimized_metric": "val/miou"}, 0.8)
    write_job(tmp_path / "b", 0, ["optimizer.lr=0.1"],
              {"status": "finished", "value": 0.7, "optimized_metric": "val/f1_mean"}, 0.7)

    with caplog.at_level(logging.WARNING):
        report(tmp_path, tmp_path / "out")

    rows = read_rows(tmp_path / "out")
    assert (rows["a/0"]["val_metric"], rows["b/0"]["val_metric"]) == ("val/miou", "val/f1_mean")
    warning = "jobs optimise different metrics (val/miou: 1, val/f1_mean: 1)"
    assert f"**Warning:** {warning}" in (tmp_path / "out" / "report.md").read_text()
    assert any(warning in r.getMessage() for r in caplog.records)


# --- finding 3: scores of other label schemes or precisions are not ranked silently ---------

def test_other_schemes_and_precisions_get_columns_and_a_warning(tmp_path: Path,
                                                               caplog) -> None:
    done = {"status": "finished", "value": 0.7, "optimized_metric": "val/f1_mean"}
    write_job(tmp_path / "a", 0, ["experiment=mine_a"], done, 0.9, scheme="ourface")
    write_job(tmp_path / "a", 1, ["experiment=mine_a"], done, 0.85, scheme="ourface",
              precision="bf16-mixed")
    write_job(tmp_path / "b", 0, ["experiment=mine_b"], done, 0.8, scheme="lapa")
    write_job(tmp_path / "b", 1, ["experiment=mine_b"], {"status": "running"})  # no scores

    with caplog.at_level(logging.WARNING):
        report(tmp_path, tmp_path / "out")

    rows = read_rows(tmp_path / "out")
    assert [(n, r["scheme"], r["precision"]) for n, r in rows.items()] == [
        ("a/0", "ourface", "32-true"), ("a/1", "ourface", "bf16-mixed"),
        ("b/0", "lapa", "32-true"), ("b/1", "", "")]
    text = (tmp_path / "out" / "report.md").read_text()
    schemes = ("jobs use different label schemes (ourface: 2, lapa: 1): their scores are "
               "not comparable")
    precisions = "jobs use different precisions (32-true: 2, bf16-mixed: 1)"
    assert f"**Warning:** {schemes}." in text and f"**Warning:** {precisions}" in text
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert schemes in logged and precisions in logged


def test_one_scheme_and_precision_add_no_column(tmp_path: Path) -> None:
    done = {"status": "finished", "value": 0.7}
    write_job(tmp_path, 0, ["optimizer.lr=0.1"], done, 0.9)
    write_job(tmp_path, 1, ["optimizer.lr=0.2"], done, 0.8)
    report(tmp_path)
    assert not {"scheme", "precision"} & set(read_rows(tmp_path)["0"])
    assert "**Warning:**" not in (tmp_path / "report.md").read_text()


# --- finding 4: a Hydra delete override ------------------------------------------------------

def test_a_delete_override_is_read_not_unreadable(tmp_path: Path) -> None:
    done = {"status": "finished", "value": 0.7}
    write_job(tmp_path, 0, ["optimizer.lr=0.1", "~callbacks.wandb_media", "+x=1"], done, 0.8)
    write_job(tmp_path, 1, ["optimizer.lr=0.2", "~callbacks.wandb_media=null"], done, 0.7)

    jobs = collect_jobs(tmp_path)
    files = report(tmp_path)

    assert [j.status for j in jobs] == ["finished", "finished"]
    assert jobs[0].overrides == {"optimizer.lr": "0.1", "callbacks.wandb_media": "<deleted>",
                                 "x": "1"}
    assert jobs[1].overrides["callbacks.wandb_media"] == "<deleted>"
    assert swept_keys(jobs) == ["optimizer.lr", "x"]
    assert tmp_path / "param_optimizer.lr.png" in files


# --- finding 7: what used to end in a traceback ------------------------------------------------

def test_a_run_stats_number_not_measured_is_a_dash(tmp_path: Path) -> None:
    done = {"status": "finished", "value": 0.7}
    write_job(tmp_path, 0, ["optimizer.lr=0.1"], done, 0.8,
              stats={**STATS, "params_total": None, "peak_memory_mb": None})
    write_job(tmp_path, 1, ["optimizer.lr=0.2"], done, 0.7,
              stats={**STATS, "train_images_per_s": None, "params_trainable": None})

    report(tmp_path)

    rows = read_rows(tmp_path)
    assert math.isnan(float(rows["0"]["params_M"])) and math.isnan(float(rows["0"]["peak_mem_MB"]))
    assert float(rows["0"]["trainable_M"]) == pytest.approx(0.5)
    assert math.isnan(float(rows["1"]["train_img_per_s"]))
    assert float(rows["1"]["params_M"]) == pytest.approx(2.0)
    assert "| 0 | finished | 0.1 | 0.7 | 0.8 | 0.4 | 0.9 | 0.8 | - | 0.5 | 12.5 | - |" in (
        tmp_path / "report.md").read_text()


def test_an_output_that_is_a_file_is_one_error_line(tmp_path: Path, capsys) -> None:
    write_job(tmp_path / "sweep", 0, ["optimizer.lr=0.1"], {"status": "finished"}, 0.8)
    (tmp_path / "afile").write_text("x")

    with pytest.raises(SystemExit) as exited:
        report_main([str(tmp_path / "sweep"), "--out", str(tmp_path / "afile")])

    assert exited.value.code == f"error: --out={tmp_path / 'afile'} is a file: give a folder " \
                                "for the output files"
    assert (tmp_path / "afile").read_text() == "x"


def test_a_folder_that_cannot_be_written_is_one_error_line(tmp_path: Path,
                                                          monkeypatch) -> None:
    """A read-only sweep folder (simulated: tests may run as root, who writes anyway)."""
    write_job(tmp_path, 0, ["optimizer.lr=0.1"], {"status": "finished"}, 0.8)

    def refused(self: Path, *args: Any, **kwargs: Any) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_bytes", refused)  # report.md and .csv: write_atomic
    with pytest.raises(SystemExit) as exited:
        report_main([str(tmp_path)])

    assert exited.value.code == (f"error: cannot write the report into {tmp_path} "
                                 "(Permission denied); give another folder with --out")


# --- audit train finding 9: a job ended by SIGTERM, Ctrl-C or its launcher -----------------

def _cfg(folder: Path, metric: str = "val/miou") -> Any:
    return OmegaConf.create({"paths": {"output_dir": str(folder)}, "optimized_metric": metric})


def _status(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "status.json").read_text())


def test_every_status_names_the_optimized_metric(tmp_path: Path, monkeypatch) -> None:
    seen: list[dict[str, Any]] = []

    def task(_: Any) -> dict[str, float]:
        seen.append(_status(tmp_path))
        return {"val/miou": 0.3}

    record_job(task, _cfg(tmp_path))
    assert seen[0]["status"] == "running" and seen[0]["optimized_metric"] == "val/miou"
    assert _status(tmp_path)["optimized_metric"] == "val/miou"

    def bad(_: Any) -> dict[str, float]:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(job_status, "in_multirun", lambda: True)
    record_job(bad, _cfg(tmp_path))
    assert _status(tmp_path)["status"] == "failed"
    assert _status(tmp_path)["optimized_metric"] == "val/miou"


def _ctrl_c_in_lightning() -> None:
    """What Lightning's ``_call_and_handle_interrupt`` does on Ctrl-C."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        raise SystemExit(1) from None


def _raise(error: BaseException) -> Any:
    def stop() -> None:
        raise error
    return stop


@pytest.mark.parametrize(("stop", "said"), [
    (_raise(SIGTERMException()), "interrupted by SIGTERMException"),
    (_ctrl_c_in_lightning, "interrupted by SystemExit (exit code 1) after KeyboardInterrupt"),
    (_raise(SystemExit(-1)), "interrupted by SystemExit (exit code -1)"),   # submitit
    (_raise(KeyboardInterrupt()), "interrupted by KeyboardInterrupt"),      # before fit
], ids=["sigterm", "ctrl-c", "submitit", "keyboard"])
@pytest.mark.parametrize("multirun", [False, True])
def test_an_interrupted_job_is_recorded_and_still_ends(tmp_path: Path, monkeypatch, stop,
                                                       said: str, multirun: bool) -> None:
    monkeypatch.setattr(job_status, "in_multirun", lambda: multirun)

    def task(_: Any) -> dict[str, float]:
        stop()
        return {}

    with pytest.raises(BaseException) as raised:
        record_job(task, _cfg(tmp_path))

    assert isinstance(raised.value, SystemExit | KeyboardInterrupt)  # re-raised as it was
    if isinstance(raised.value, SystemExit):  # never status 0: a stopped run did not finish
        assert raised.value.code not in (None, 0)
    status = _status(tmp_path)
    assert status["status"] == "interrupted" and status["error"] == said
    assert status["ended"] >= status["started"] and status["optimized_metric"] == "val/miou"


def test_the_report_lists_interrupted_jobs_and_ranks_them_after_finished_ones(
        tmp_path: Path) -> None:
    write_job(tmp_path, 0, ["optimizer.lr=0.1"],
              {"status": "finished", "value": 0.5, "optimized_metric": "val/f1_mean"}, 0.6)
    write_job(tmp_path, 1, ["optimizer.lr=0.2"],   # stopped after its test: not finished
              {"status": "interrupted", "optimized_metric": "val/f1_mean",
               "error": "interrupted by SIGTERMException"}, 0.9)
    write_job(tmp_path, 2, ["optimizer.lr=0.3"],
              {"status": "interrupted", "optimized_metric": "val/f1_mean",
               "error": "interrupted by SystemExit (exit code -1)"},
              metric_log={"val/f1_mean": [0.2, 0.4]})
    write_job(tmp_path, 3, ["optimizer.lr=0.4"], {"status": "running"})

    report(tmp_path)

    rows = read_rows(tmp_path)
    assert list(rows) == ["0", "1", "2", "3"]
    assert [rows[n]["status"] for n in "0123"] == ["finished", "interrupted", "interrupted",
                                                   "running"]
    assert float(rows["2"]["val_best"]) == pytest.approx(0.4)
    text = (tmp_path / "report.md").read_text()
    section = text.split("## Interrupted jobs")[1]
    assert "- job 1: interrupted by SIGTERMException" in section
    assert "- job 2: interrupted by SystemExit (exit code -1)" in section
    assert "Running (or stopped without a status): jobs 3" in text


# --- audit round 10 (report): untested sweeps, order, eval folders, stale plots -----------

def test_a_sweep_without_test_scores_is_ranked_and_plotted_by_val_best(tmp_path: Path) -> None:
    """``test=false`` leaves no scores.json: rows came out in folder order and the plots
    were empty frames reported as written."""
    for num, value in enumerate([0.3, 0.9, 0.5]):
        write_job(tmp_path, num, [f"optimizer.lr={num + 1}e-4"],
                  {"status": "finished", "optimized_metric": "val/f1_mean", "value": value})
    files = report(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "3 jobs, sorted by val_best (no job has test/f1_mean)." in text
    assert list(read_rows(tmp_path)) == ["1", "2", "0"]
    assert tmp_path / "param_optimizer.lr.png" in files


def test_job_folders_sort_by_their_numbers() -> None:
    from faceparse.reporting.collect import _natural

    names = ["10_fusion=sum", "2_fusion=gate", "1", "3"]
    assert sorted(names, key=lambda n: _natural(Path(n))) == [
        "1", "2_fusion=gate", "3", "10_fusion=sum"]
    assert sorted(["x/10", "x/9"], key=lambda n: _natural(Path(n))) == ["x/9", "x/10"]


def test_a_training_job_renamed_with_hydra_job_name_is_reported(tmp_path: Path) -> None:
    folder = write_job(tmp_path, 0, ["optimizer.lr=0.1"], {"status": "finished"}, 0.8)
    (folder / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    name: my_ablation\n")
    report(tmp_path)
    assert list(read_rows(tmp_path)) == ["0"]


def test_ties_and_unscored_jobs_keep_job_number_order(tmp_path: Path) -> None:
    for num in (2, 10, 3):  # folders as text sort 10 before 2
        write_job(tmp_path, num, [f"optimizer.lr={num}e-4"])  # running: no status, no score
    write_job(tmp_path, 11, ["optimizer.lr=1e-4"], {"status": "finished",
              "optimized_metric": "val/loss", "value": 0.2}, 0.7)
    write_job(tmp_path, 12, ["optimizer.lr=5e-4"], {"status": "finished",
              "optimized_metric": "val/loss", "value": 0.1}, 0.7)  # same score, lower loss
    report(tmp_path)
    assert list(read_rows(tmp_path)) == ["12", "11", "2", "3", "10"]
    assert "Running (or stopped without a status): jobs 2, 3, 10" in (
        tmp_path / "report.md").read_text()


def test_an_eval_multirun_is_refused_not_reported_as_running(tmp_path: Path, caplog) -> None:
    def job_of(command: str, num: int) -> None:
        folder = write_job(tmp_path, num, [f"ckpt=run{num}"])
        (folder / ".hydra" / "hydra.yaml").write_text(
            f"hydra:\n  job:\n    name: {command}\n")

    job_of("eval", 0)
    job_of("eval", 1)
    with pytest.raises(ValueError, match="its jobs ran faceparse.eval, not faceparse.train; "
                                         "the report reads training sweeps"):
        report(tmp_path)
    assert not (tmp_path / "report.md").exists()
    job_of("train", 2)
    report(tmp_path)
    assert list(read_rows(tmp_path)) == ["2"]
    assert "a faceparse.eval job, not a training job: left out of the report" in caplog.text


def test_a_report_into_the_same_folder_removes_the_earlier_plots(tmp_path: Path) -> None:
    first, second, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    for num, lr in enumerate(("1e-4", "1e-3")):
        write_job(first, num, [f"optimizer.lr={lr}"], {"status": "finished"}, 0.5 + num / 10)
        write_job(second, num, [f"loss.aux_weight={num}"], {"status": "finished",
                  "value": 0.4 + num / 10})  # test=false: val_best only
    report(first, out)
    assert (out / "param_optimizer.lr.png").is_file() and (out / "classes_best.png").is_file()
    (out / "notes.png").write_bytes(b"mine")
    (out / "param_mine.png").write_bytes(b"mine too")  # named like a plot, never written by one
    files = report(second, out)
    # sweep b has no test scores: no per-class plot; its own key; a's plots gone
    assert sorted(p.name for p in out.glob("*.png")) == ["notes.png",
                                                         "param_loss.aux_weight.png",
                                                         "param_mine.png"]
    assert out / "param_loss.aux_weight.png" in files


def test_numeric_categories_are_ordered_by_value() -> None:
    from faceparse.reporting.plots import _category_order

    names = ["0.01", "null", "1e-4", "0.001", "2e-3", "auto"]
    assert sorted(names, key=_category_order) == ["1e-4", "0.001", "2e-3", "0.01", "auto",
                                                  "null"]


def test_a_failed_job_with_an_unreadable_file_stays_failed(tmp_path: Path) -> None:
    """A corrupt file beside a failure hid it: "unreadable", its error lost, its scores
    ranked among the finished jobs'."""
    folder = write_job(tmp_path, 0, ["optimizer.lr=0.1"], {"status": "failed", "error": "boom"},
                       0.9)
    (folder / "run_stats.json").write_text("{half")
    write_job(tmp_path, 1, ["optimizer.lr=0.2"], {"status": "finished"}, 0.5)
    (job,) = [j for j in collect_jobs(tmp_path) if j.folder == folder]
    assert job.status == "failed"
    assert job.error.startswith("boom; unreadable run_stats.json")
    report(tmp_path)
    assert list(read_rows(tmp_path)) == ["1", "0"]  # the finished job first
