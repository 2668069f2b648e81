"""Training options that used to pick the wrong checkpoint, crash after an epoch, or hide
that a run was stopped."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from faceparse.cli import CONF_DIR
from faceparse.labels import get_scheme
from faceparse.train import refuse_unused_vit, train
from faceparse.training.job_status import sweep_value
from faceparse.training.preflight import check_resumed_optimizer, check_training_options

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_the_best_checkpoint_is_chosen_in_its_own_metrics_direction(compose, tiny) -> None:
    assert compose([*tiny]).callbacks.model_checkpoint.mode == "max"
    assert compose([*tiny, "optimized_metric=val/loss"]).callbacks.model_checkpoint.mode == "min"


def test_a_checkpoint_monitor_other_than_the_optimized_metric_is_refused(compose, tiny) -> None:
    """It would keep (and test) one checkpoint and return another metric's score."""
    cfg = compose([*tiny, "callbacks.model_checkpoint.monitor=val/loss"])
    with pytest.raises(ValueError, match="callbacks.model_checkpoint.monitor=val/loss differs "
                                         "from optimized_metric=val/f1_mean"):
        check_training_options(cfg)


def test_an_optuna_search_keeps_the_experiments_optimized_metric() -> None:
    search = OmegaConf.load(CONF_DIR / "hparams_search" / "optuna.yaml")
    assert "optimized_metric" not in search  # it would override an experiment's own


def test_sweep_values_are_finite_or_none() -> None:
    assert sweep_value("val/f1/beard", {"best/val/f1/beard": -math.inf}) is None
    assert sweep_value("val/f1/beard", {"best/val/f1/beard": math.nan}) is None
    assert sweep_value("val/miou", {"best/val/miou": 0.5}) == 0.5


def test_a_per_class_metric_the_validation_lacks_does_not_stop_the_run(compose, tiny,
                                                                      tmp_path) -> None:
    """Lightning stopped the run after its first epoch ("could not find the monitored
    key") when the monitored class was missing from the validation ground truth."""
    overrides = [*tiny, "data.dataset.sizes={train: 8, val: 1, test: 1}", "test=false"]
    data = instantiate(compose(overrides).data)
    data.open_splits(["val"])
    present = np.unique(data.datasets["val"][0]["mask"].numpy())
    scheme = get_scheme("ourface")
    absent = next(n for i, n in enumerate(scheme.class_names) if i not in present)
    metrics = train(compose([*overrides, f"optimized_metric=val/f1/{absent}"],
                            output_dir=tmp_path))
    assert math.isnan(metrics[f"val/f1/{absent}"])
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


@pytest.fixture(scope="module")
def one_epoch_run(compose, tiny, tmp_path_factory) -> tuple[list[str], str]:
    """A finished tiny run's overrides and its last.ckpt."""
    overrides = [*tiny, "test=false", "trainer.max_epochs=2"]
    out = tmp_path_factory.mktemp("run")
    train(compose([*overrides, "trainer.max_epochs=1"], output_dir=out))
    return overrides, str(out / "checkpoints" / "last.ckpt")


@pytest.mark.parametrize(("override", "message"), [
    ("optimizer=sgd", r"continues its own optimizer state \(1 parameter group"),
    ("vit.finetune_blocks=1", r"this command's optimizer has 2 of"),
    ("optimizer.lr=0.01", r"continues its own optimizer state, and optimizer.lr differ"),
    ("optimizer.weight_decay=0.5", r"and optimizer.weight_decay differ"),
    ("scheduler.min_lr_ratio=0.5", r"and scheduler.min_lr_ratio differ"),
])
def test_ckpt_path_refuses_an_optimizer_it_would_not_use(compose, one_epoch_run, tmp_path,
                                                        override: str, message: str) -> None:
    """Lightning restores the saved optimizer: another one failed after the run folder was
    kept (``error: momentum``), or was silently replaced while the config recorded it."""
    overrides, last = one_epoch_run
    cfg = compose([*overrides, override, f"ckpt_path={last}"], output_dir=tmp_path / "run")
    with pytest.raises(ValueError, match=message):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_finished_run_resumed_elsewhere_still_carries_its_best(compose, one_epoch_run,
                                                                 tmp_path) -> None:
    """No epoch is left to train (a run whose test stage failed, run again to test): its
    best checkpoint is still copied in, and its score returned."""
    overrides, last = one_epoch_run
    metrics = train(compose([*overrides, "trainer.max_epochs=1", f"ckpt_path={last}"],
                            output_dir=tmp_path))
    assert (tmp_path / "checkpoints" / "epoch_000.ckpt").is_file()
    assert math.isfinite(metrics["best/val/f1_mean"])


@pytest.mark.parametrize("override", ["vit.layers=[-9,-5,-1]", "vit.finetune_blocks=2"])
def test_vit_options_without_a_vit_are_refused(compose, tiny, tmp_path, override: str) -> None:
    """``encoder=cnn`` ignores them: the fusion grid trained two identical jobs."""
    option = override.split("=")[0]
    cfg = compose([*tiny, "encoder=cnn", override], output_dir=tmp_path)
    with pytest.raises(ValueError, match=f"{option}=.* has no ViT: use encoder=vit or "):
        train(cfg)
    refuse_unused_vit(compose([*tiny, "encoder=dual", override]))  # read there


def test_the_default_vit_options_go_with_a_cnn(compose, tiny) -> None:
    refuse_unused_vit(compose([*tiny, "encoder=cnn"]))


def test_a_checkpoint_from_another_torch_version_is_not_refused(compose, one_epoch_run) -> None:
    """Flags torch adds to a parameter group between versions do not make another optimizer."""
    overrides, last = one_epoch_run
    saved = torch.load(last, weights_only=False)
    for group in saved["optimizer_states"][0]["param_groups"]:
        for newer in ("decoupled_weight_decay", "maximize", "differentiable"):
            group.pop(newer, None)
    check_resumed_optimizer(instantiate(compose(overrides).model), saved, last)
