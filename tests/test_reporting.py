"""The sweep report on a hand-written multirun folder, and the job status records."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from faceparse.report import main as report_main
from faceparse.report import report
from faceparse.reporting import collect_jobs, swept_keys
from faceparse.training import job_status
from faceparse.training.job_status import record_job, sweep_value


def write_job(sweep: Path, num: int, overrides: list[str], status: dict | None = None,
              f1: dict[str, float] | None = None, stats: dict | None = None,
              val_log: list[float] | None = None) -> Path:
    """A job folder as Hydra and our callbacks leave it."""
    folder = sweep / str(num)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(
        "".join(f"- {o}\n" for o in overrides))
    if status:
        (folder / "status.json").write_text(json.dumps(status))
    if f1:
        mean = sum(f1.values()) / len(f1)
        classes = [{"class": c, "present": True, "f1": v, "iou": v / 2} for c, v in f1.items()]
        classes.append({"class": "beard", "present": False, "f1": 0.0, "iou": 0.0})
        (folder / "scores.json").write_text(json.dumps(
            {"scheme": "ourface", "f1_mean": mean, "miou": mean / 2, "pixel_acc": 0.9,
             "classes": classes}))
    if stats:
        (folder / "run_stats.json").write_text(json.dumps(stats))
    if val_log:
        (folder / "csv").mkdir()
        rows = "".join(f"{i},{v}\n" for i, v in enumerate(val_log))
        (folder / "csv" / "metrics.csv").write_text("epoch,val/f1_mean\n" + rows)
    return folder


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Four jobs: two finished (the second better), one failed, one still running."""
    base = ["trainer.max_epochs=1"]
    stats = {"params_total": 2_000_000, "params_trainable": 500_000,
             "train_images_per_s": 12.5, "peak_memory_mb": 900.0}
    write_job(tmp_path, 0, [*base, "optimizer.lr=0.001", "fusion=concat"],
              {"status": "finished", "value": 0.61, "optimized_metric": "val/f1_mean"},
              {"skin": 0.8, "hair": 0.4}, stats)
    write_job(tmp_path, 1, [*base, "optimizer.lr=0.0001", "fusion=sum"],
              {"status": "finished", "value": 0.72, "optimized_metric": "val/f1_mean"},
              {"skin": 0.9, "hair": 0.7}, stats)
    write_job(tmp_path, 2, [*base, "optimizer.lr=0.01", "fusion=gate"],
              {"status": "failed", "error": "ValueError: bad | combination"})
    write_job(tmp_path, 3, [*base, "optimizer.lr=0.00001", "fusion=vit_only"],
              val_log=[0.2, 0.35, 0.3])
    return tmp_path


def test_collect_reads_status_scores_and_running_jobs(sweep: Path) -> None:
    jobs = {j.folder.name: j for j in collect_jobs(sweep)}

    assert [jobs[n].status for n in "0123"] == ["finished", "finished", "failed", "running"]
    assert jobs["1"].test["f1_mean"] == pytest.approx(0.8)
    assert jobs["1"].class_f1 == {"skin": 0.9, "hair": 0.7}   # absent classes left out
    assert jobs["3"].val_best == pytest.approx(0.35)          # best logged so far, not last
    assert jobs["2"].error.startswith("ValueError")
    assert swept_keys(list(jobs.values())) == ["optimizer.lr", "fusion"]


def test_report_sorts_by_test_f1_and_lists_failed_and_running(sweep: Path,
                                                             tmp_path_factory) -> None:
    out = tmp_path_factory.mktemp("report")
    files = report(sweep, out)

    with open(out / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows[:2]] == ["1", "0"]        # 0.8 before 0.6
    assert {r["job"] for r in rows[2:]} == {"2", "3"}        # no test score: last
    assert rows[0]["fusion"] == "sum" and float(rows[0]["f1/hair"]) == pytest.approx(0.7)
    assert float(rows[0]["params_M"]) == pytest.approx(2.0)
    assert float(rows[0]["train_img_per_s"]) == pytest.approx(12.5)
    assert math.isnan(float(rows[2]["test/f1_mean"]))
    text = (out / "report.md").read_text()
    assert "## Failed jobs" in text and "job 2: ValueError: bad \\| combination" in text
    assert "Running (or stopped without a status): jobs 3" in text
    pngs = {p.name for p in files if p.suffix == ".png"}
    assert pngs == {"param_optimizer.lr.png", "param_fusion.png", "classes_best.png"}
    assert all((out / p).stat().st_size > 1000 for p in pngs)


def test_jobs_of_several_sweeps_in_one_folder_keep_distinct_names(tmp_path: Path) -> None:
    """Two sweeps under one folder both have jobs 0 and 1: rows name the sweep too."""
    for day, bonus in (("2026-01-01_10-00-00", 0.0), ("2026-01-02_10-00-00", 0.05)):
        for num in (0, 1):
            write_job(tmp_path / day, num, [f"optimizer.lr={10.0 ** -(num + 2)}"],
                      {"status": "finished", "value": 0.5}, {"skin": 0.5 + num / 10 + bonus})
    report(tmp_path, tmp_path / "out")
    with open(tmp_path / "out" / "report.csv", newline="") as f:
        names = [r["job"] for r in csv.DictReader(f)]
    assert names == ["2026-01-02_10-00-00/1", "2026-01-01_10-00-00/1",
                     "2026-01-02_10-00-00/0", "2026-01-01_10-00-00/0"]


def test_report_refuses_a_folder_without_jobs(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no job folder"):
        report_main([str(tmp_path)])
    with pytest.raises(SystemExit, match="no such sweep folder"):
        report_main([str(tmp_path / "missing")])


def test_sweep_value_prefers_the_best_checkpoint() -> None:
    metrics = {"val/f1_mean": 0.3, "best/val/f1_mean": 0.5}
    assert sweep_value("val/f1_mean", metrics) == 0.5
    assert sweep_value("val/f1_mean", {"val/f1_mean": 0.3}) == 0.3
    assert sweep_value("val/f1_mean", {"val/f1_mean": math.nan}) is None
    assert sweep_value(None, metrics) is None


def test_failed_job_is_recorded_and_returns_none_in_a_multirun(tmp_path: Path,
                                                               monkeypatch) -> None:
    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)},
                            "optimized_metric": "val/f1_mean"})

    def bad_task(_):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(job_status, "in_multirun", lambda: True)
    assert record_job(bad_task, cfg) is None
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "failed"
    assert status["error"] == "RuntimeError: CUDA out of memory"
    assert "bad_task" in status["traceback"]

    monkeypatch.setattr(job_status, "in_multirun", lambda: False)
    with pytest.raises(RuntimeError, match="out of memory"):   # a single run still raises
        record_job(bad_task, cfg)

    assert record_job(lambda _: {"best/val/f1_mean": 0.4, "val/f1_mean": 0.2}, cfg) == 0.4
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "finished" and status["value"] == 0.4


def test_report_lists_jobs_with_unreadable_files_and_reports_the_rest(
        sweep: Path, tmp_path_factory, caplog) -> None:
    (sweep / "1" / "status.json").write_text('{"status": "fin')   # a job rewriting it
    (sweep / "2" / "scores.json").write_text("garbage\n")
    out = tmp_path_factory.mktemp("report")

    report(sweep, out)

    with open(out / "report.csv", newline="") as f:
        rows = {r["job"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"0", "1", "2", "3"}
    # job 2 failed: it stays failed, its own error first (unreadable would rank its scores
    # among the finished jobs')
    assert [rows[n]["status"] for n in "0123"] == ["finished", "unreadable", "failed",
                                                   "running"]
    assert rows["1"]["error"].startswith("unreadable status.json: JSONDecodeError: ")
    assert "; unreadable scores.json: JSONDecodeError: Expecting" in rows["2"]["error"]
    assert float(rows["1"]["test/f1_mean"]) == pytest.approx(0.8)   # its scores still read
    assert float(rows["0"]["f1/hair"]) == pytest.approx(0.4)
    text = (out / "report.md").read_text()
    assert "## Unreadable jobs" in text
    assert "- job 1: unreadable status.json: JSONDecodeError:" in text
    assert "## Failed jobs" in text and "; unreadable scores.json: JSONDecodeError:" in text
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(m.startswith(f"{sweep / '1' / 'status.json'}: cannot read it") for m in warned)
    assert any(m.startswith(f"{sweep / '2' / 'scores.json'}: cannot read it") for m in warned)


@pytest.mark.parametrize(("name", "text", "reason"), [
    ("status.json", "[1, 2]", "a JSON list, not an object"),
    ("status.json", '{"status": "finished", "value": "high"}', "could not convert"),
    ("scores.json", '{"classes": [{"class": "skin"}]}', "KeyError: 'present'"),
    ("run_stats.json", '{"params_total": "2M"}', "params_total is '2M', not a number"),
    ("csv/metrics.csv", "epoch,val/f1_mean\n0,0.2\n1,0.3x\n", "could not convert"),
    (".hydra/overrides.yaml", "- a=1\n- [unclosed\n", "ParserError"),
])
def test_a_job_file_with_wrong_content_is_unreadable_not_a_crash(
        tmp_path: Path, name: str, text: str, reason: str) -> None:
    write_job(tmp_path, 0, ["fusion=sum"], {"status": "finished", "value": 0.5})
    write_job(tmp_path, 1, ["fusion=gate"])
    (tmp_path / "1" / name).parent.mkdir(exist_ok=True)
    (tmp_path / "1" / name).write_text(text)

    jobs = {j.folder.name: j for j in collect_jobs(tmp_path)}
    report(tmp_path)

    assert jobs["0"].status == "finished"
    assert jobs["1"].status == "unreadable"
    assert jobs["1"].error.startswith(f"unreadable {name}: ") and reason in jobs["1"].error
    assert "- job 1: unreadable" in (tmp_path / "report.md").read_text()


def test_status_written_atomically_never_partial(tmp_path: Path, monkeypatch) -> None:
    """A write that dies midway (killed, disk full) keeps the last complete status.json."""
    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)},
                            "optimized_metric": "val/f1_mean"})
    seen: list[dict] = []

    def task(_):
        seen.append(json.loads((tmp_path / "status.json").read_text()))
        return {"val/f1_mean": 0.3}

    assert record_job(task, cfg) == 0.3
    assert seen[0]["status"] == "running"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]  # no temporary left

    def half_then_fail(path: Path, data, *args, **kwargs):
        with open(path, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    monkeypatch.setattr(Path, "write_bytes", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        job_status._write(tmp_path, status="failed", error="x" * 1000)
    status = json.loads((tmp_path / "status.json").read_text())   # complete, the last one
    assert status["status"] == "finished" and status["value"] == 0.3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]
