"""resume=: a stopped run continues in its own folder, with its own config, exactly."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from faceparse.cli import CONF_DIR
from faceparse.train import train
from faceparse.training.resume_run import newest_checkpoint, resume_config
from faceparse.training.run_folder import command_keys

# No LR schedule: its length follows max_epochs, and the stopped run is extended below.
EXACT = ("scheduler=none", "test=false", "data.num_workers=0", "trainer.deterministic=true")


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


def metric_rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # a whole command, end to end: in CI's slow suite
def test_stopped_run_resumes_in_its_folder_to_the_same_weights(
    compose, tiny, tmp_path: Path
) -> None:
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    train(compose([*tiny, *EXACT, "trainer.max_epochs=2"], output_dir=whole))
    train(compose([*tiny, *EXACT, "trainer.max_epochs=1"], output_dir=stopped))
    assert torch.load(stopped / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2

    train(compose([*tiny, *EXACT, "trainer.max_epochs=2", f"resume={stopped}"],
                  output_dir=stopped))

    expected, resumed = weights(whole), weights(stopped)
    assert expected.keys() == resumed.keys()
    for key, value in expected.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=key)
    # one metrics file for the whole run: the stopped part's rows are kept, then continued
    epochs = {r["epoch"] for r in metric_rows(stopped) if r.get("val/f1_mean")}
    assert epochs == {"0", "1"}
    assert [r["train/loss"] for r in metric_rows(stopped) if r.get("train/loss")] == [
        r["train/loss"] for r in metric_rows(whole) if r.get("train/loss")]
    assert not list(tmp_path.glob("stopped*/csv/version_*"))


def test_resume_auto_starts_afresh_in_an_empty_folder(compose, tiny, tmp_path: Path) -> None:
    metrics = train(compose([*tiny, *EXACT, "resume=auto", "callbacks=none"],
                            output_dir=tmp_path))
    assert "val/f1_mean" in metrics and (tmp_path / "config_resolved.yaml").is_file()


def test_resume_refuses_what_would_be_a_different_run(compose, tiny, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FileNotFoundError, match="resume=.*needs config_resolved.yaml"):
        train(compose([*tiny, f"resume={run}"], output_dir=run))
    with pytest.raises(ValueError, match="this run writes to"):
        train(compose([*tiny, f"resume={run}"], output_dir=tmp_path / "elsewhere"))
    with pytest.raises(ValueError, match="is a file: resume takes a run folder"):
        train(compose([*tiny, f"resume={__file__}"], output_dir=run))

    (run / "checkpoints").mkdir()
    shutil.copy(Path(__file__).parent / "conftest.py", run / "checkpoints" / "last.ckpt")
    saved = OmegaConf.to_yaml(compose(tiny, output_dir=run), resolve=True)
    (run / "config_resolved.yaml").write_text(saved)
    with pytest.raises(ValueError, match="changes the run's config.*data.image_size"):
        train(compose([*tiny, "data.image_size=64", f"resume={run}"], output_dir=run))
    with pytest.raises(ValueError, match="give one of them"):
        train(compose([*tiny, f"resume={run}", f"ckpt_path={run}/checkpoints/last.ckpt"],
                      output_dir=run))


def fake_run(folder: Path, cfg: DictConfig) -> None:
    """A run folder as training leaves it, without training: its config and a checkpoint."""
    (folder / "checkpoints").mkdir(parents=True)
    shutil.copy(Path(__file__).parent / "conftest.py", folder / "checkpoints" / "last.ckpt")
    (folder / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def resumed(cfg: DictConfig) -> DictConfig:
    """``resume_config`` as ``faceparse.train`` calls it: checking what the command sets."""
    return resume_config(cfg, command_keys(HydraConfig.get().overrides.task, CONF_DIR))


def test_resume_checks_only_what_the_command_sets(compose, tiny, tmp_path: Path) -> None:
    run = tmp_path / "run"
    saved = compose([*tiny, "scheduler=none"], output_dir=run)
    saved.paths.root_dir = saved.paths.data_dir = "/where/the/run/started"
    fake_run(run, saved)

    # neither the tiny settings nor the cwd retyped: the run's own config, extended
    cfg = resumed(compose([f"resume={run}", "trainer.max_epochs=3"], output_dir=run))
    assert cfg.trainer.max_epochs == 3 and cfg.data.image_size == 32
    assert cfg.cnn.arch == "vgg11_bn" and cfg.model.scheduler is None
    assert cfg.paths.root_dir == "/where/the/run/started"
    assert cfg.ckpt_path == str(run / "checkpoints" / "last.ckpt")
    # retyping the run's own settings (a requeued job's command) is no change
    cfg = resumed(compose([*tiny, "scheduler=none", f"resume={run}"], output_dir=run))
    assert cfg.trainer.max_epochs == 1
    # keys the command does not set keep the run's values, the default's length included
    assert resumed(compose([f"resume={run}"], output_dir=run)).trainer.max_epochs == 1

    with pytest.raises(ValueError, match=r"changes the run's config \(data.image_size\); "
                                         r"only trainer.max_epochs"):
        resumed(compose([f"resume={run}", "trainer.max_epochs=3", "data.image_size=64"],
                        output_dir=run))
    with pytest.raises(ValueError, match=r"changes the run's config \(scheduler\._partial_"):
        resumed(compose([f"resume={run}", "scheduler=cosine"], output_dir=run))


def test_a_resumed_run_may_find_its_weight_files_elsewhere(compose, tiny, tmp_path: Path
                                                          ) -> None:
    """A cleaned or moved weights folder: the first refusal said to give vit.weights=, and
    the resume then refused vit.weights= as a change of the run's config."""
    run = tmp_path / "run"
    old, new = tmp_path / "old" / "vit.pth", tmp_path / "new" / "vit.pth"
    saved = compose([*tiny, "vit.random_init=false", f"vit.weights={old}",
                     f"cnn.weights={old.with_name('vgg.pth')}"], output_dir=run)
    fake_run(run, saved)

    cfg = resumed(compose([f"resume={run}", f"vit.weights={new}"], output_dir=run))
    assert cfg.vit.weights == str(new)
    assert cfg.model.net.encoder.vit.weights == str(new)  # the resolved copy the net is built from
    assert cfg.cnn.weights == str(old.with_name("vgg.pth"))  # not set: the run's own
    with pytest.raises(ValueError, match=r"changes the run's config \(vit.size\)"):
        resumed(compose([f"resume={run}", f"vit.weights={new}", "vit.size=base"],
                        output_dir=run))


def test_a_moved_run_folder_is_refused(compose, tiny, tmp_path: Path) -> None:
    """Its saved config writes elsewhere (checkpoints, logs): resuming would split the run."""
    fake_run(tmp_path / "moved", compose(tiny, output_dir=tmp_path / "old"))
    with pytest.raises(ValueError, match="old \\(was the folder moved\\?\\)"):
        resumed(compose([f"resume={tmp_path / 'moved'}"], output_dir=tmp_path / "moved"))


def test_resume_auto_never_writes_over_a_run_it_cannot_continue(compose, tiny, tmp_path: Path
                                                                 ) -> None:
    """A finished run without last.ckpt (callbacks=none, save_last=false) or one that kept
    only its best checkpoint: a new run there would overwrite its status, config and scores."""
    finished = tmp_path / "finished"
    (finished / "csv").mkdir(parents=True)
    (finished / "csv" / "metrics.csv").write_text("step,val/f1_mean\n0,0.5\n")
    (finished / "status.json").write_text('{"status": "finished"}')
    with pytest.raises(ValueError, match="holds a finished run but no last.ckpt"):
        resumed(compose([*tiny, "resume=auto"], output_dir=finished))
    best_only = tmp_path / "best_only"
    (best_only / "checkpoints").mkdir(parents=True)
    (best_only / "checkpoints" / "epoch_002.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match="holds checkpoints/epoch_002.ckpt but no last.ckpt"):
        resumed(compose([*tiny, "resume=auto"], output_dir=best_only))
    # killed before its first checkpoint: started again, its metrics kept aside, not continued
    killed = tmp_path / "killed"
    (killed / "csv").mkdir(parents=True)
    (killed / "csv" / "metrics.csv").write_text("step,train/loss\n0,2.0\n")
    (killed / "status.json").write_text('{"status": "running"}')
    cfg = resumed(compose([*tiny, "resume=auto"], output_dir=killed))
    assert cfg.resume == "auto" and not (killed / "csv" / "metrics.csv").exists()
    assert [p.read_text() for p in (killed / "csv").glob("metrics.before_*.csv")] == [
        "step,train/loss\n0,2.0\n"]


def test_resume_auto_with_ckpt_path_starts_from_it_once_then_continues(compose, tiny,
                                                                      tmp_path: Path) -> None:
    """The SLURM script's resume=auto with ckpt_path=<weights>: the first attempt starts
    from the file, a requeued one continues its own run."""
    run = tmp_path / "run"
    start = f"ckpt_path={tmp_path / 'decoder.ckpt'}"
    assert resumed(compose([*tiny, "resume=auto", start], output_dir=run)).ckpt_path == str(
        tmp_path / "decoder.ckpt")
    fake_run(run, compose([*tiny, start], output_dir=run))
    cfg = resumed(compose([*tiny, "resume=auto", start], output_dir=run))
    assert cfg.ckpt_path == str(run / "checkpoints" / "last.ckpt")


@pytest.mark.parametrize("value", ["true", "1"])
def test_resume_true_is_one_clear_refusal(compose, tiny, tmp_path: Path, value: str) -> None:
    from faceparse.training.run_folder import run_folder

    assert run_folder(True, "outputs/x") == "outputs/x"  # Hydra's folder resolves
    with pytest.raises(ValueError, match=r"resume takes a run folder \(resume=<folder>\) or "
                                         r"auto"):
        resumed(compose([*tiny, f"resume={value}"], output_dir=tmp_path))


def test_a_job_slurm_requeued_continues_its_run(compose, tiny, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """submitit requeues a sweep job with its first command, without resume=: it must not
    start again at epoch 0 beside its own checkpoints."""
    from faceparse.train import resumed as train_resumed

    run = tmp_path / "run"
    fake_run(run, compose(tiny, output_dir=run))
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    cfg = train_resumed(compose(tiny, output_dir=run))
    assert cfg.ckpt_path == str(run / "checkpoints" / "last.ckpt")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    with pytest.raises(ValueError, match="already holds a run"):  # not requeued: refused
        train_resumed(compose(tiny, output_dir=run))


def test_command_keys_of_group_options() -> None:
    keys = command_keys(["experiment=quickstart", "data=lapa", "data.root=/d", "~logger",
                         "+callbacks.stop._target_=x", "hydra.run.dir=/r"], CONF_DIR)
    # quickstart sets top-level nodes and overrides the trainer and loss options
    assert {"cnn", "data", "trainer", "loss", "task_name"} <= set(keys)
    assert {"data.root", "logger", "callbacks.stop._target_", "hydra.run.dir"} <= set(keys)
    assert command_keys(["scheduler=none"], CONF_DIR) == ["model"]  # a _global_ option


@pytest.mark.slow
def test_resume_from_the_command_line_with_only_a_longer_length(
    compose, tiny, tmp_path: Path
) -> None:
    """README: ``resume=<run>`` alone (plus a new length), typed in another directory."""
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    train(compose([*tiny, *EXACT, "trainer.max_epochs=1"], output_dir=run))
    elsewhere.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "faceparse.train", f"resume={run}", "trainer.max_epochs=2"],
        cwd=elsewhere, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 4  # 2 epochs of 8 samples in batches of 4
    assert {r["epoch"] for r in metric_rows(run) if r.get("val/f1_mean")} == {"0", "1"}
    config = OmegaConf.load(run / "config_resolved.yaml")
    assert config.trainer.max_epochs == 2 and config.data.image_size == 32
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    # Hydra left .hydra/ to the job (resume=), which wrote it once the resume was accepted
    overrides = OmegaConf.load(run / ".hydra" / "overrides.yaml")
    assert list(overrides) == [f"resume={run}", "trainer.max_epochs=2"]
    assert list(elsewhere.iterdir()) == []  # nothing written where the command was typed


class FailAfterOneStep(L.Callback):
    """Stands in for a kill: the run stops with an error after its first optimizer step."""

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        raise RuntimeError("stopped by the test")


def test_a_stopped_run_leaves_a_checkpoint_resume_picks(compose, tiny, tmp_path: Path) -> None:
    cfg = compose([*tiny, *EXACT, f"+callbacks.stop._target_={__name__}.FailAfterOneStep"],
                  output_dir=tmp_path)
    with pytest.raises(RuntimeError, match="stopped by the test"):
        train(cfg)
    saved = tmp_path / "checkpoints" / "on_exception.ckpt"
    assert torch.load(saved, weights_only=False)["global_step"] == 1
    assert newest_checkpoint(tmp_path) == saved


class FailBeforeTheFirstStep(L.Callback):
    """Stands in for a failure while training starts: nothing trained yet."""

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        raise RuntimeError("stopped before a step")


def test_a_run_stopped_before_its_first_step_leaves_no_checkpoint(compose, tiny,
                                                                  tmp_path: Path) -> None:
    """An untrained model is nothing to resume: no full-size on_exception.ckpt, which
    resume=auto would otherwise pick (the run above, stopped after a step, keeps one)."""
    cfg = compose([*tiny, *EXACT, f"+callbacks.stop._target_={__name__}.FailBeforeTheFirstStep"],
                  output_dir=tmp_path)
    with pytest.raises(RuntimeError, match="stopped before a step"):
        train(cfg)
    assert not list(tmp_path.glob("checkpoints/*.ckpt"))
    assert newest_checkpoint(tmp_path) is None


def test_a_run_extends_by_steps_or_time_as_typed(compose, tiny, tmp_path: Path) -> None:
    """README: max_steps/max_time may change on resume=, typed without Hydra's ``+``; the
    defaults are Lightning's own (no step or time limit)."""
    fresh = compose(tiny)
    assert fresh.trainer.max_steps == -1 and fresh.trainer.max_time is None
    run = tmp_path / "run"
    fake_run(run, compose([*tiny, "scheduler=none"], output_dir=run))
    cfg = resumed(compose([f"resume={run}", "trainer.max_steps=20",
                           "trainer.max_time=00:01:00:00"], output_dir=run))
    assert (cfg.trainer.max_steps, cfg.trainer.max_time) == (20, "00:01:00:00")
    assert cfg.trainer.max_epochs == 1  # the run's own


def test_cuda_random_state_resumes_on_fewer_gpus(monkeypatch) -> None:
    """A run saved on an 8-GPU node keeps one CUDA state per device it saw; restoring all
    of them on a 1-GPU machine failed with a bare IndexError. Each process now keeps and
    restores its own device's state, and reads older files by its device index."""
    from faceparse.checkpoints.resume import rng_states, set_rng_states

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: torch.tensor([7], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", restored.append)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    states = rng_states()
    assert [s.tolist() for s in states["cuda"]] == [[7]]
    set_rng_states(states)
    eight = [torch.tensor([k], dtype=torch.uint8) for k in range(8)]
    set_rng_states({**states, "cuda": eight})
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    set_rng_states({**states, "cuda": eight})
    set_rng_states(states)  # device 3 of a file saved by one process: its only state
    assert [t.tolist() for t in restored] == [[7], [0], [3], [7]]
