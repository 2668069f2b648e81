"""Sweeps run as a user runs them: a submitit_local grid with a failing job, an Optuna
study resumed from its sqlite file, and the report on both folders."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# Seconds-long jobs: the tiny nets on 4 synthetic faces, no pictures, no progress bar.
FAST = ("data.dataset.sizes={train: 4, val: 4, test: 4}", "callbacks.progress_bar=null",
        "callbacks.prediction_images=null")


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def report_rows(sweep: Path) -> list[dict[str, str]]:
    result = run("faceparse.report", str(sweep))
    assert result.returncode == 0, result.stderr[-2000:]
    with open(sweep / "report.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_submitit_local_grid_records_the_failed_job_and_goes_on(tiny, tmp_path: Path) -> None:
    sweep = tmp_path / "grid"
    # batch_size=0 is refused by the data loader: that job fails, the sweep must not
    result = run("faceparse.train", "-m", *tiny, *FAST, "hydra/launcher=submitit_local",
                 f"hydra.sweep.dir={sweep}", "data.batch_size=4,0")
    assert result.returncode == 0, result.stderr[-2000:]

    good = json.loads((sweep / "0" / "status.json").read_text())
    bad = json.loads((sweep / "1" / "status.json").read_text())
    assert good["status"] == "finished" and 0.0 <= good["value"] <= 1.0
    assert good["value"] == pytest.approx(good["metrics"]["best/val/f1_mean"])
    assert bad["status"] == "failed" and "batch_size" in bad["error"]
    stats = json.loads((sweep / "0" / "run_stats.json").read_text())
    assert stats["params_trainable"] < stats["params_total"]     # the ViT is frozen
    assert stats["train_images"] == 4 and stats["train_images_per_s"] > 0

    rows = report_rows(sweep)
    assert [(r["job"], r["status"], r["data.batch_size"]) for r in rows] == [
        ("0", "finished", "4"), ("1", "failed", "0")]
    assert float(rows[0]["test/f1_mean"]) == pytest.approx(
        json.loads((sweep / "0" / "scores.json").read_text())["f1_mean"])
    assert "batch_size" in (sweep / "report.md").read_text().split("## Failed jobs")[1]
    assert (sweep / "param_data.batch_size.png").stat().st_size > 1000
    assert (sweep / "classes_best.png").is_file()


@pytest.mark.slow
def test_optuna_study_resumes_without_rerunning_finished_trials(tiny, tmp_path: Path) -> None:
    import optuna

    sweep = tmp_path / "optuna"
    # the fusion group is not on this branch: its entry leaves the search space here
    args = ["hparams_search=optuna", *tiny, *FAST, f"hydra.sweep.dir={sweep}",
            "hydra.sweeper.params.fusion=''", "hydra.sweeper.n_trials=1"]
    first = run("faceparse.train", *args)
    assert first.returncode == 0, first.stderr[-2000:]
    started = {n: json.loads((sweep / n / "status.json").read_text())["started"]
               for n in ("0",)}

    second = run("faceparse.train", *args[:-1], "hydra.sweeper.n_trials=2")
    assert second.returncode == 0, second.stderr[-2000:]
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{sweep}/optuna.db")
    assert len(study.trials) == 2
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    for n in ("0",):  # not rerun: their folders are untouched
        assert json.loads((sweep / n / "status.json").read_text())["started"] == started[n]
    values = sorted(json.loads((sweep / n / "status.json").read_text())["value"]
                    for n in ("0", "1"))
    assert sorted(t.value for t in study.trials) == pytest.approx(values)
    lrs = {yaml.safe_load((sweep / n / ".hydra" / "overrides.yaml").read_text())[0]
           for n in ("0", "1")}
    assert len(lrs) == 2  # the resumed trial is a new point

    rows = report_rows(sweep)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"finished"}
    assert {"optimizer.lr", "optimizer.weight_decay", "loss.aux_weight"} <= set(rows[0])


def hydra_section(overrides: list[str]):
    """The ``hydra`` part of the train config as a command line composes it."""
    from hydra import compose, initialize_config_dir

    from faceparse.cli import CONF_DIR, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True).hydra


def test_optuna_search_space_and_study_file() -> None:
    sweeper = hydra_section(["hparams_search=optuna"]).sweeper

    assert sweeper._target_.endswith("ResumableOptunaSweeper")
    assert sweeper.direction == "maximize" and sweeper.max_failure_rate == 1.0
    assert set(sweeper.params) == {"optimizer.lr", "optimizer.weight_decay",
                                   "decoder.decoder_channels", "loss.aux_weight", "fusion"}
    assert sweeper.params.fusion == "choice(vit_only, concat, sum, gate, cross_attn)"
    # one fixed folder per study name: the same command finds its study again
    assert sweeper.storage == "sqlite:///multirun/train/optuna_search/optuna.db"
    # a loss improves downwards: the study minimises it
    loss = hydra_section(["hparams_search=optuna", "optimized_metric=val/loss"]).sweeper
    assert loss.direction == "minimize"


def test_slurm_launcher_extends_the_plugin_config() -> None:
    launcher = hydra_section(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"]).launcher

    # the plugin's launcher, each job's result collected on its own (a killed job: failed)
    assert launcher._target_ == "hydra_plugins.faceparse_sweepers.submitit_jobs.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 1, 240)
    assert launcher.max_num_timeout == 3         # requeued after a timeout or preemption
    assert "qos" in launcher                     # the plugin's fields are all there


@pytest.mark.parametrize("name", ["submitit_local", "submitit_slurm"])
def test_the_plugins_own_launcher_names_go_on_past_a_killed_job(name: str) -> None:
    launcher = hydra_section([f"hydra/launcher={name}"]).launcher

    # the names the plugin documents run ours too, with the plugin's options and defaults
    kind = "LocalLauncher" if name == "submitit_local" else "SlurmLauncher"
    assert launcher._target_ == f"hydra_plugins.faceparse_sweepers.submitit_jobs.{kind}"
    assert launcher.timeout_min == 60 and ("partition" in launcher) == (kind == "SlurmLauncher")


def test_another_hydra_app_keeps_the_plugins_own_launchers(tmp_path: Path) -> None:
    """The plugin package is shared by every Hydra app of the environment: only faceparse's
    commands get the launchers that go on past a killed job."""
    (tmp_path / "app.py").write_text("import hydra\n@hydra.main(version_base='1.3', "
                                     "config_path=None)\ndef main(cfg):\n    pass\nmain()\n")
    done = subprocess.run([sys.executable, "app.py", "hydra/launcher=submitit_local", "--cfg",
                           "hydra"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert ("_target_: hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
            in done.stdout)


def test_a_study_records_its_command_and_refuses_another() -> None:
    optuna = pytest.importorskip("optuna")
    from hydra_plugins.faceparse_sweepers.resumable_optuna import (
        COMMAND_ATTR,
        _claim_study,
        command_mismatch,
        command_record,
    )

    space = {"optimizer.lr": "tag(log, interval(1e-5, 1e-3))"}
    record = command_record(["hparams_search=optuna", "data.image_size=32"], space)
    # the same command, overrides in another order: the same study
    assert command_mismatch(record, command_record(
        ["data.image_size=32", "hparams_search=optuna"], space)) is None
    other = command_record(["hparams_search=optuna", "data.image_size=64", "loss=ce_dice"],
                           {"optimizer.lr": "interval(1e-4, 1e-2)"})
    assert command_mismatch(record, other) == (
        "its command had data.image_size=32; this one adds data.image_size=64 loss=ce_dice; "
        "search space: optimizer.lr")

    study = optuna.create_study(study_name="search")
    _claim_study(study, record, "search", "memory")  # made before records: takes this one
    assert study.user_attrs[COMMAND_ATTR] == record
    _claim_study(study, record, "search", "memory")
    with pytest.raises(ValueError, match=r"study_name=search: the study in memory was made by "
                                         r"another command \(its command had .*\); start a "
                                         r"new study"):
        _claim_study(study, other, "search", "memory")


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_another_search_with_the_same_study_name_is_refused(tiny, tmp_path: Path) -> None:
    """As typed: one ``error:`` line, and the stored study gains no trial."""
    optuna = pytest.importorskip("optuna")
    from hydra_plugins.faceparse_sweepers.resumable_optuna import COMMAND_ATTR

    sweep = tmp_path / "optuna"
    sweep.mkdir()
    storage = f"sqlite:///{sweep}/optuna.db"
    study = optuna.create_study(study_name="search", storage=storage, direction="maximize")
    study.set_user_attr(COMMAND_ATTR, {"overrides": ["data.image_size=64"], "search_space": {}})
    result = run("faceparse.train", "hparams_search=optuna", *tiny, *FAST,
                 f"hydra.sweep.dir={sweep}", "hydra.sweeper.params.fusion=''",
                 "hydra.sweeper.n_trials=1")
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(
        "error: hydra.sweeper.study_name=search: the study in"), result.stderr[-3000:]
    assert "its command had data.image_size=64" in errors[0]
    assert "hydra.sweeper.study_name=<new" in errors[0]
    assert "Traceback" not in result.stderr
    assert optuna.load_study(study_name="search", storage=storage).trials == []
    assert sorted(p.name for p in sweep.iterdir()) == ["optuna.db"]


@pytest.mark.slow
def test_a_study_whose_every_trial_failed_says_so_in_one_line(tiny, tmp_path: Path) -> None:
    """The plugin asks the study for its best trial at the end: Optuna's answer without a
    finished one was a bare ``Record does not exist.``"""
    sweep = tmp_path / "optuna"
    result = run("faceparse.train", "hparams_search=optuna", *tiny, *FAST,
                 "data.image_size=40", f"hydra.sweep.dir={sweep}",
                 "hydra.sweeper.params.fusion=''", "hydra.sweeper.n_trials=1")
    assert result.returncode == 1
    assert (f"error: study search: no trial finished (every one failed), so there is no best "
            f"value; the status.json of each job under {sweep} says why") in result.stderr
    assert "Record does not exist" not in result.stderr
    assert json.loads((sweep / "0" / "status.json").read_text())["status"] == "failed"
