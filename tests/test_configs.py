"""Every option of every config group composes, resolves and (for the model) builds."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.errors import ConfigCompositionException, InstantiationException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from faceparse.config import auto_precision
from faceparse.labels import get_scheme

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
GROUPS = (
    "data", "encoder", "decoder", "optimizer", "scheduler", "trainer", "logger", "callbacks",
    "experiment", "debug",
)
MODEL_GROUPS = ("encoder", "decoder", "optimizer", "scheduler")

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def options(*groups: str) -> list[tuple[str, str]]:
    """(group, option) for every ``conf/<group>/*.yaml``: new options are covered as added."""
    return [(g, p.stem) for g in groups for p in sorted((CONF_DIR / g).glob("*.yaml"))]


def ids(pairs: list[tuple[str, str]]) -> list[str]:
    return [f"{g}={o}" for g, o in pairs]


def use_small_vits(node: DictConfig) -> None:
    """Set ``size: small`` on every DINOv3 encoder in a config subtree."""
    if node.get("_target_") == "faceparse.models.DinoVitEncoder":
        node.size = "small"
    for key in node:
        child = node[key]
        if isinstance(child, DictConfig):
            use_small_vits(child)


def has_unresolved(value) -> bool:
    if isinstance(value, dict):
        return any(has_unresolved(v) for v in value.values())
    if isinstance(value, list):
        return any(has_unresolved(v) for v in value)
    return isinstance(value, str) and "${" in value


def test_every_group_has_a_folder() -> None:
    for group in GROUPS:
        assert (CONF_DIR / group).is_dir(), group
    for group in GROUPS:
        if group != "experiment":
            assert options(group), f"conf/{group} has no option"


def test_defaults_compose_and_resolve(compose_train, tmp_path: Path) -> None:
    cfg = compose_train()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert not has_unresolved(resolved)
    assert resolved["paths"]["output_dir"] == str(tmp_path / "run")
    assert resolved["trainer"]["default_root_dir"] == str(tmp_path / "run")
    assert resolved["paths"]["root_dir"] == str(Path.cwd())


ALL_OPTIONS = options(*GROUPS)
MODEL_OPTIONS = options(*MODEL_GROUPS)


@pytest.mark.parametrize(("group", "option"), ALL_OPTIONS, ids=ids(ALL_OPTIONS))
def test_option_composes_and_resolves(compose_train, group: str, option: str) -> None:
    cfg = compose_train([f"{group}={option}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert not has_unresolved(resolved)
    assert resolved["model"]["net"]["num_classes"] == get_scheme(cfg.data.labels).num_classes


@pytest.mark.parametrize(("group", "option"), MODEL_OPTIONS, ids=ids(MODEL_OPTIONS))
def test_model_option_instantiates_with_derived_class_count(
    compose_train, group: str, option: str
) -> None:
    overrides = [f"{group}={option}", "data.labels=celebamask"]
    if group in ("optimizer", "scheduler"):
        overrides.append("encoder=vit")  # the cheapest encoder; these options are about training
    cfg = compose_train(overrides)
    use_small_vits(cfg.encoder)
    assert OmegaConf.is_interpolation(cfg.model.net, "num_classes")  # never typed twice
    module = instantiate(cfg.model)
    assert module.net.num_classes == 19 == module.scheme.num_classes
    module.eval()
    with torch.no_grad():
        logits = module(torch.randn(1, 3, 32, 32))
    assert logits.shape == (1, 19, 32, 32)

    # The optimizer and scheduler partials are completed by the module.
    module.trainer = L.Trainer(
        accelerator="cpu", max_epochs=-1, max_steps=40, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    conf = module.configure_optimizers()
    optimizer = conf["optimizer"]
    assert type(optimizer).__name__ == cfg.model.optimizer._target_.rsplit(".", 1)[1]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(cfg.model.optimizer.lr)
    trainable = [p for p in module.parameters() if p.requires_grad]
    in_optimizer = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(in_optimizer) == len(trainable) > 0
    frozen_vits = [m for m in module.modules() if getattr(m, "frozen", False)]
    for vit in frozen_vits:  # a frozen ViT never enters the optimizer
        assert not {id(p) for p in vit.parameters()} & {id(p) for p in in_optimizer}
    assert ("lr_scheduler" in conf) == (cfg.model.scheduler is not None)


@pytest.mark.parametrize(
    ("labels", "num_classes"),
    [("ourface", 11), ("celebamask", 19), ("celebamask_farl", 19), ("lapa", 11),
     ("facesynthetics", 19)],
)
def test_num_classes_follows_the_label_scheme(compose_train, labels: str, num_classes: int) -> None:
    cfg = compose_train([f"data.labels={labels}"])
    assert cfg.model.net.num_classes == num_classes
    assert cfg.model.labels == labels


@pytest.mark.parametrize("option", [o for _, o in options("logger")])
def test_logger_option_instantiates(compose_train, option: str) -> None:
    from faceparse.train import instantiate_all

    if option == "wandb":
        pytest.importorskip("wandb")
    if option == "tensorboard":
        pytest.importorskip("tensorboard")
    cfg = compose_train([f"logger={option}"])
    loggers = instantiate_all(cfg.logger)
    assert len(loggers) == len(cfg.logger) >= 1
    assert all(isinstance(lg, L.pytorch.loggers.Logger) for lg in loggers)


@pytest.mark.parametrize("option", [o for _, o in options("callbacks")])
def test_callbacks_option_instantiates(compose_train, option: str) -> None:
    from faceparse.train import instantiate_all

    cfg = compose_train([f"callbacks={option}"])
    callbacks = instantiate_all(cfg.callbacks)
    assert len(callbacks) == len(cfg.callbacks)
    assert all(isinstance(cb, L.Callback) for cb in callbacks)


@pytest.mark.parametrize("option", ["cpu", "default"])
def test_cpu_trainers_instantiate(compose_train, option: str) -> None:
    cfg = compose_train([f"trainer={option}", "trainer.accelerator=cpu"])
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert isinstance(trainer, L.Trainer)
    assert trainer.gradient_clip_val == 1.0
    assert cfg.trainer.precision == "32-true"


def test_ddp_trainer(compose_train) -> None:
    cfg = compose_train(["trainer=ddp", "trainer.devices=8"])
    assert cfg.trainer.strategy == "ddp"
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.devices == 8
    assert cfg.trainer.sync_batchnorm is True
    # ddp inherits the defaults it does not change
    assert cfg.trainer.gradient_clip_val == 1.0 and cfg.trainer.max_epochs == 30


def test_debug_fdr_turns_on_fast_dev_run(compose_train) -> None:
    cfg = compose_train(["debug=fdr"])
    assert cfg.trainer.fast_dev_run is True
    assert cfg.logger is None


def test_scheduler_none_gives_constant_lr(compose_train) -> None:
    assert compose_train(["scheduler=none"]).model.scheduler is None


@pytest.mark.parametrize("override", ["encoder.not_a_key=1", "trainer.max_epoch=3"])
def test_misspelt_key_fails_at_compose(compose_train, override: str) -> None:
    key = override.split("=")[0].rsplit(".", 1)[1]
    with pytest.raises(ConfigCompositionException, match=key):
        compose_train([override])


def test_unknown_option_lists_the_available_ones(compose_train) -> None:
    with pytest.raises(MissingConfigException, match="dual"):
        compose_train(["encoder=duel"])


@pytest.mark.parametrize(
    ("overrides", "node"),
    [(["encoder=cnn", "encoder.arch=vgg11_bn", "+encoder.not_a_key=1"], "encoder"),
     (["+trainer.max_epoch=3"], "trainer")],
)
def test_forced_unknown_key_fails_at_instantiate(compose_train, overrides, node: str) -> None:
    cfg = compose_train(overrides)
    with pytest.raises(InstantiationException, match="not_a_key|max_epoch"):
        instantiate(cfg[node])


def test_auto_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    assert auto_precision("cpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert auto_precision("gpu") == "bf16-mixed"
    assert auto_precision("auto") == "bf16-mixed"
    assert auto_precision("cpu") == "32-true"  # never bf16 on a CPU
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert auto_precision("gpu") == "32-true"
