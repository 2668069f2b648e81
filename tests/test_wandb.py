"""W&B logging: run ids kept per run folder, offline by default, and what a run writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from faceparse.training.loggers import has_wandb_api_key, wandb_logger, wandb_run_id


@pytest.fixture(autouse=True)
def restored_wandb_mode(monkeypatch) -> None:
    """The logger sets WANDB_MODE's keeper itself (as Lightning sets WANDB_MODE): both are
    put back after each test, so no test reads another's."""
    from faceparse.training.loggers import USER_MODE_KEPT

    for name in (USER_MODE_KEPT, "WANDB_MODE"):
        monkeypatch.setenv(name, "")  # recorded: restored (or removed) afterwards
        monkeypatch.delenv(name)


def test_a_run_folder_keeps_its_wandb_run_id(tmp_path: Path) -> None:
    first = wandb_run_id(tmp_path / "run")
    assert (tmp_path / "run" / "wandb" / "run_id.txt").read_text().strip() == first
    assert wandb_run_id(tmp_path / "run") == first  # resumed in the same folder
    assert wandb_run_id(tmp_path / "other") != first  # another job of a sweep


def test_wandb_is_offline_without_an_api_key(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "https://api.wandb.ai")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert not has_wandb_api_key()
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password abc\n")
    assert has_wandb_api_key()
    monkeypatch.setenv("NETRC", str(tmp_path / "missing"))
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert has_wandb_api_key()


def test_an_unreachable_host_falls_back_to_offline(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    logger = wandb_logger(tmp_path, project="p")
    assert logger._offline
    assert logger._id == (tmp_path / "wandb" / "run_id.txt").read_text().strip()


def wandb_file_text(run: Path) -> str:
    """The offline run's ``.wandb`` file (protobuf records; wandb ships no Python reader
    for it any more) as text, to find the keys and JSON values it recorded."""
    (path,) = run.glob("run-*.wandb")
    return path.read_bytes().decode("utf-8", errors="replace")


@pytest.mark.slow
def test_a_run_with_logger_wandb_logs_config_metrics_tables_and_media(tiny, tmp_path: Path
                                                                     ) -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "WANDB_BASE_URL": "http://127.0.0.1:9"}
    env.pop("WANDB_API_KEY", None)
    cmd = [sys.executable, "-m", "faceparse.train", *tiny, "logger=[csv,tensorboard,wandb]",
           "callbacks.progress_bar=null", "callbacks.wandb_media.log_best_checkpoint=true",
           "logger.wandb.tags=[tiny]", f"hydra.run.dir={tmp_path}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]

    run_id = (tmp_path / "wandb" / "run_id.txt").read_text().strip()
    (run,) = tmp_path.glob(f"wandb/offline-run-*-{run_id}")
    recorded = wandb_file_text(run)
    assert "tiny" in recorded and '"image_size":32' in recorded  # tags, nested config
    for key in ("train/loss", "val/f1_mean", "test/f1_mean", "trainer/global_step",
                "val/per_class", "test/per_class", "val/predictions", "test/predictions",
                "val/confusion_matrix", "test/confusion_matrix"):
        assert key in recorded, key
    assert '"ground_truth"' in recorded and '"prediction"' in recorded  # the image masks
    (table,) = (run / "files" / "media" / "table" / "test").glob("per_class_*.table.json")
    rows = json.loads(table.read_text())
    assert rows["columns"] == ["class", "present", "f1", "iou"] and len(rows["data"]) == 11
    assert list((run / "files" / "media" / "images" / "mask" / "val").glob("*.mask.png"))
    assert f"model-{run_id}" in recorded  # the best checkpoint's artifact
    # the whole config reaches the other loggers too
    for hparams in (tmp_path / "csv" / "hparams.yaml", tmp_path / "tensorboard" / "hparams.yaml"):
        assert "optimized_metric: val/f1_mean" in hparams.read_text()


def test_finish_wandb_closes_the_job_run_so_the_next_job_starts_its_own(tmp_path: Path,
                                                                        monkeypatch) -> None:
    import wandb

    from faceparse.training.loggers import finish_wandb

    monkeypatch.setenv("WANDB_SILENT", "true")
    ids = []
    for job in ("0", "1"):  # what a multirun does with two jobs in one process
        logger = wandb_logger(tmp_path / job, offline=True, project="p")
        ids.append(logger.experiment.id)
        finish_wandb()
        assert wandb.run is None
    assert ids[0] != ids[1]
    assert ids == [wandb_run_id(tmp_path / job) for job in ("0", "1")]


@pytest.mark.parametrize(("mode", "extra", "group"), [
    ("RUN", [], "train"),
    ("MULTIRUN", ["hydra.sweep.dir=multirun/train/2026-11-28_18-40-12_123456"],
     "train/2026-11-28_18-40-12_123456"),
    ("MULTIRUN", ["hparams_search=optuna"], "train/optuna_search"),
    ("MULTIRUN", ["experiment=ablation_fusion", "hydra.sweep.dir=multirun/x/y"],
     "ablation_fusion/y"),
])
def test_two_sweeps_never_share_a_wandb_group(mode: str, extra: list[str], group: str) -> None:
    """Every grid and study of one task used to land in one group, ``train``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from faceparse.cli import CONF_DIR, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["logger=wandb", f"hydra.mode={mode}", *extra],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        assert cfg.logger.wandb.group == group
    finally:
        HydraConfig.instance().cfg = None


@pytest.mark.parametrize("mode", ["offline", "dryrun", "disabled"])
def test_the_users_wandb_mode_keeps_a_run_offline(tmp_path: Path, monkeypatch, mode: str) -> None:
    """It used to be deleted whenever a key was configured and the host reachable: the run
    then streamed the config and pictures the user meant to keep on the machine."""
    from faceparse.training import loggers

    monkeypatch.delenv(loggers.USER_MODE_KEPT, raising=False)
    monkeypatch.setenv("WANDB_MODE", mode)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(loggers, "_reachable", lambda url, timeout=0: True)
    logger = wandb_logger(tmp_path, project="p")
    assert logger._offline and os.environ["WANDB_MODE"] == mode
    assert logger._wandb_init.get("mode") == ("disabled" if mode == "disabled" else None)
    with pytest.raises(ValueError, match=f"logger.wandb.offline=false, but WANDB_MODE={mode} "
                                         "in the environment keeps W&B offline"):
        wandb_logger(tmp_path, offline=False, project="p")


def test_an_online_job_drops_only_the_dryrun_an_earlier_offline_job_left(tmp_path: Path,
                                                                         monkeypatch) -> None:
    from faceparse.training import loggers

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv(loggers.USER_MODE_KEPT, raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_logger(tmp_path / "0", offline=True, project="p")._offline  # job 0
    monkeypatch.setenv("WANDB_MODE", "dryrun")  # what Lightning sets for it
    monkeypatch.setattr(loggers, "_reachable", lambda url, timeout=0: True)
    # a DDP rank started after it, or job 1, may go online: the dryrun is not the user's
    assert not wandb_logger(tmp_path / "1", offline=False, project="p")._offline
    assert "WANDB_MODE" not in os.environ


def test_a_wandb_mode_set_after_import_is_the_users(tmp_path: Path, monkeypatch) -> None:
    """A notebook sets WANDB_MODE after importing faceparse: it was read once, at import."""
    from faceparse.training import loggers

    monkeypatch.delenv(loggers.USER_MODE_KEPT, raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(loggers, "_reachable", lambda url, timeout=0: True)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_logger(tmp_path / "a", project="p")._offline
    monkeypatch.setenv("WANDB_MODE", "dryrun")  # Lightning's, over the user's "offline"
    assert wandb_logger(tmp_path / "b", project="p")._offline  # still the user's offline


def test_a_self_hosted_login_is_found_in_wandbs_settings(tmp_path: Path, monkeypatch) -> None:
    """``wandb login --host`` keeps the server in wandb's settings, not in WANDB_BASE_URL:
    the key for it was looked up under the public host, so every run went offline."""
    from faceparse.training import loggers

    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    # what `wandb login --host https://wandb.mycorp.example` leaves in wandb's config folder
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    (tmp_path / "wandb_config").mkdir()
    (tmp_path / "wandb_config" / "settings").write_text(
        "[default]\nbase_url = https://wandb.mycorp.example\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    (tmp_path / "netrc").write_text("machine wandb.mycorp.example login user password abc\n")
    assert loggers._wandb_host() == "https://wandb.mycorp.example"
    assert has_wandb_api_key()
    monkeypatch.setenv("WANDB_BASE_URL", "https://api.wandb.ai")  # the variable still wins
    assert not has_wandb_api_key()


def test_offline_must_be_true_false_or_null(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="logger.wandb.offline=maybe: give true, false or null"):
        wandb_logger(tmp_path, offline="maybe", project="p")


@pytest.mark.parametrize(("every", "check_val", "max_epochs", "logged"), [
    (2, 2, 6, [1, 3, 5]),     # the same N: every validation (before: none at all)
    (5, 1, 5, [4]),           # the fifth epoch, the last (before: only the first epoch)
    (3, 1, 5, [2, 4]),        # every third epoch, and the last one
    (1, 1, 3, [0, 1, 2]),
    (5, 1, -1, [4]),          # a step-limited run: its last epoch logs too (see below)
])
def test_wandb_media_logs_on_the_epochs_lightning_validates(tmp_path: Path, every: int,
                                                            check_val: int, max_epochs: int,
                                                            logged: list[int]) -> None:
    from types import SimpleNamespace

    from lightning.pytorch.loggers import WandbLogger

    from faceparse.training.wandb_media import WandbMedia

    media = WandbMedia("ourface", every_n_epochs=every)
    wandb = WandbLogger(save_dir=str(tmp_path), offline=True)  # never started: no run made
    due = []
    for epoch in range(max_epochs if max_epochs > 0 else 5):
        if (epoch + 1) % check_val:  # Lightning's check_val_every_n_epoch
            continue
        steps = 4 * (epoch + 1)  # 4 steps an epoch; max_steps=4 * 5 when max_epochs=-1
        trainer = SimpleNamespace(loggers=[wandb], sanity_checking=False, current_epoch=epoch,
                                  max_epochs=max_epochs, global_step=steps,
                                  max_steps=20 if max_epochs == -1 else -1)
        if media._due(trainer, "val"):
            due.append(epoch)
    assert due == logged
