"""Every option of every config group composes, resolves and (for the model) builds."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.errors import ConfigCompositionException, InstantiationException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from faceparse import fast_path
from faceparse.cli import CONF_DIR
from faceparse.fast_path import auto_precision
from faceparse.hardware import CpuPolicy, cpu_policy, decided_cpu_policy
from faceparse.labels import get_scheme
from faceparse.training.optim import fused_default

GROUPS = (
    "data", "cnn", "vit", "encoder", "decoder", "loss", "optimizer", "scheduler", "trainer",
    "logger", "callbacks", "experiment", "debug",
)
MODEL_GROUPS = ("cnn", "vit", "encoder", "decoder", "loss", "optimizer", "scheduler")
RANDOM_VIT = "vit.random_init=true"  # no DINOv3 file in tests: random weights, on purpose

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def options(*groups: str) -> list[tuple[str, str]]:
    """(group, option) for every ``conf/<group>/*.yaml``: new options are covered as added."""
    return [(g, p.stem) for g in groups for p in sorted((CONF_DIR / g).glob("*.yaml"))]


def ids(pairs: list[tuple[str, str]]) -> list[str]:
    return [f"{g}={o}" for g, o in pairs]


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


def test_defaults_compose_and_resolve(compose, tmp_path: Path) -> None:
    cfg = compose(output_dir=tmp_path / "run")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert not has_unresolved(resolved)
    assert resolved["paths"]["output_dir"] == str(tmp_path / "run")
    assert resolved["trainer"]["default_root_dir"] == str(tmp_path / "run")
    assert resolved["paths"]["root_dir"] == str(Path.cwd())


ALL_OPTIONS = options(*GROUPS)
MODEL_OPTIONS = options(*MODEL_GROUPS)


@pytest.mark.parametrize(("group", "option"), ALL_OPTIONS, ids=ids(ALL_OPTIONS))
def test_option_composes_and_resolves(compose, group: str, option: str) -> None:
    cfg = compose([f"{group}={option}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert not has_unresolved(resolved)
    assert resolved["model"]["net"]["num_classes"] == get_scheme(cfg.data.labels).num_classes


@pytest.mark.parametrize(("group", "option"), MODEL_OPTIONS, ids=ids(MODEL_OPTIONS))
def test_model_option_instantiates_with_derived_class_count(
    compose, group: str, option: str
) -> None:
    overrides = [f"{group}={option}", "data.labels=celebamask", "vit.size=small", RANDOM_VIT]
    if group in ("loss", "optimizer", "scheduler"):
        overrides.append("encoder=vit")  # the cheapest encoder; these options are about training
    cfg = compose(overrides)
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
def test_num_classes_follows_the_label_scheme(compose, labels: str, num_classes: int) -> None:
    cfg = compose([f"data.labels={labels}"])
    assert cfg.model.net.num_classes == num_classes
    assert cfg.model.labels == labels


@pytest.mark.parametrize("option", [o for _, o in options("logger")])
def test_logger_option_instantiates(compose, option: str) -> None:
    from faceparse.train import instantiate_all

    if option == "wandb":
        pytest.importorskip("wandb")
    if option == "tensorboard":
        pytest.importorskip("tensorboard")
    cfg = compose([f"logger={option}"])
    loggers = instantiate_all(cfg.logger)
    assert len(loggers) == len(cfg.logger) >= 1
    assert all(isinstance(lg, L.pytorch.loggers.Logger) for lg in loggers)


@pytest.mark.parametrize("option", [o for _, o in options("callbacks")])
def test_callbacks_option_instantiates(compose, option: str) -> None:
    from faceparse.train import instantiate_all

    cfg = compose([f"callbacks={option}"])
    callbacks = instantiate_all(cfg.callbacks)
    assert len(callbacks) == len(cfg.callbacks)
    assert all(isinstance(cb, L.Callback) for cb in callbacks)


@pytest.mark.parametrize(("metric", "mode"), [("val/f1_mean", "max"), ("val/loss", "min"),
                                              ("train/loss", "min"), ("val/iou/hair", "max")])
def test_the_best_checkpoint_is_the_lowest_loss_and_the_highest_score(compose, metric, mode
                                                                      ) -> None:
    """A loss kept in mode max would keep, test and report the worst epoch."""
    from faceparse.train import instantiate_all

    cfg = compose([f"optimized_metric={metric}"])
    best = instantiate_all(cfg.callbacks)[0]
    assert (best.monitor, best.mode) == (metric, mode)


@pytest.mark.parametrize("option", ["cpu", "default"])
def test_cpu_trainers_instantiate(compose, option: str) -> None:
    cfg = compose([f"trainer={option}", "trainer.accelerator=cpu"])
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert isinstance(trainer, L.Trainer)
    assert trainer.gradient_clip_val == 1.0
    # bf16 only where this CPU computes it in hardware faster than fp32
    assert cfg.trainer.precision == ("bf16-mixed" if cpu_policy().bf16 else "32-true")


def test_ddp_trainer(compose) -> None:
    cfg = compose(["trainer=ddp", "trainer.devices=8"])
    assert cfg.trainer.strategy == "ddp"
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.devices == 8
    assert cfg.trainer.sync_batchnorm is True
    # ddp inherits the defaults it does not change
    assert cfg.trainer.gradient_clip_val == 1.0 and cfg.trainer.max_epochs == 30


def test_debug_fdr_turns_on_fast_dev_run(compose) -> None:
    cfg = compose(["debug=fdr"])
    assert cfg.trainer.fast_dev_run is True
    # Lightning replaces the loggers itself; with none, the LR monitor callback would refuse
    assert cfg.logger and cfg.callbacks.lr_monitor


def test_scheduler_none_gives_constant_lr(compose) -> None:
    assert compose(["scheduler=none"]).model.scheduler is None


@pytest.mark.parametrize("override", ["encoder.not_a_key=1", "vit.not_a_key=1",
                                      "trainer.max_epoch=3"])
def test_misspelt_key_fails_at_compose(compose, override: str) -> None:
    key = override.split("=")[0].rsplit(".", 1)[1]
    with pytest.raises(ConfigCompositionException, match=key):
        compose([override])


def test_unknown_option_lists_the_available_ones(compose) -> None:
    with pytest.raises(MissingConfigException, match="dual"):
        compose(["encoder=duel"])


@pytest.mark.parametrize(
    ("overrides", "node"),
    [(["encoder=cnn", "cnn.arch=vgg11_bn", "+cnn.not_a_key=1"], "encoder"),
     (["+trainer.max_epoch=3"], "trainer")],
)
def test_forced_unknown_key_fails_at_instantiate(compose, overrides, node: str) -> None:
    cfg = compose(overrides)
    with pytest.raises(InstantiationException, match="not_a_key|max_epoch"):
        instantiate(cfg[node])


def _cpu_bf16(monkeypatch: pytest.MonkeyPatch, bf16: bool) -> None:
    monkeypatch.setattr(fast_path, "decided_cpu_policy",
                        lambda: CpuPolicy(bf16=bf16, channels_last=True, reason="test"))


def test_auto_precision_and_fused_optimizer(monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu_bf16(monkeypatch, False)
    assert auto_precision("cpu") == "32-true"
    assert fused_default("auto", "32-true") and fused_default("cpu", "bf16-mixed")  # CPU too
    assert not fused_default("cpu", "16-mixed") and not fused_default("mps", "32-true")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert auto_precision("gpu") == "bf16-mixed"
    assert auto_precision("auto") == "bf16-mixed"
    assert auto_precision("cpu") == "32-true"  # no fast bf16 on this CPU
    assert fused_default("gpu", "bf16-mixed") and fused_default("auto", "32-true")
    assert not fused_default("gpu", "16-mixed")  # an fp16 scaler: Lightning cannot clip then
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert auto_precision("gpu") == "32-true"


def test_cpu_training_takes_bf16_where_the_cpu_policy_chose_it(monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    """AMX / AVX-512-BF16 CPUs train in bf16 (1.38x, same quickstart F1); others in fp32."""
    _cpu_bf16(monkeypatch, True)
    assert auto_precision("cpu") == "bf16-mixed" and auto_precision("auto") == "bf16-mixed"
    assert auto_precision("mps") == "32-true"
    monkeypatch.undo()
    monkeypatch.setenv("FACEPARSE_CPU_BF16", "0")  # the user keeps fp32 on any CPU
    monkeypatch.setenv("FACEPARSE_CPU_CHANNELS_LAST", "1")
    decided_cpu_policy.cache_clear()
    try:
        assert auto_precision("cpu") == "32-true"
    finally:
        decided_cpu_policy.cache_clear()


ENCODERS = [o for _, o in options("encoder")]
DATA = [o for _, o in options("data")]
EXPERIMENTS = [o for _, o in options("experiment")]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_every_experiment_composes_with_every_encoder_and_data_option(
    compose, experiment: str
) -> None:
    """An experiment is a diff that applies to any encoder and dataset (a CPU-sized fusion
    sweep composes): every pair resolves, every net and datamodule instantiates."""
    for encoder in ENCODERS:
        cfg = compose([f"experiment={experiment}", f"encoder={encoder}"])
        with torch.device("meta"):  # builds every module; allocates and initialises nothing
            net = instantiate(cfg.model.net)
        assert type(net.encoder).__name__ == cfg.model.net.encoder._target_.rsplit(".", 1)[1]
    for data in DATA:
        cfg = compose([f"experiment={experiment}", f"data={data}", "data.root=/nowhere"])
        assert not has_unresolved(OmegaConf.to_container(cfg, resolve=True))
        datamodule = instantiate(cfg.data)  # reads no file before setup
        assert datamodule.image_size == cfg.data.image_size
    for encoder in ENCODERS:
        for data in DATA:
            resolved = OmegaConf.to_container(
                compose([f"experiment={experiment}", f"encoder={encoder}", f"data={data}"]),
                resolve=True)
            assert not has_unresolved(resolved), (encoder, data)


def test_a_frozen_vit_without_weights_is_refused(compose) -> None:
    """The default (reference) model has a frozen DINOv3 ViT: without its file, training
    would look normal on noise. The refusal says where to get the file and where to put it."""
    with pytest.raises(InstantiationException) as info:
        instantiate(compose().model.net)
    message = str(info.value)
    for hint in ("facebookresearch/dinov3", "dinov3_vitl16_pretrain_lvd1689m", "checkpoints/",
                 "vit.weights=", "vit.random_init=true"):
        assert hint in message
    with pytest.raises(InstantiationException, match="dinov3_vits16"):
        instantiate(compose(["vit.size=small", "vit.finetune_blocks=2"]).model.net)
    # a ViT that trains entirely is no DINOv3 either without its weights, unless on purpose
    with pytest.raises(InstantiationException, match="train a ViT from scratch"):
        instantiate(compose(["vit.size=small", "vit.frozen=false", "encoder=vit"]).model.net)
    net = instantiate(compose(["vit.size=small", "vit.frozen=false", "vit.random_init=true",
                               "encoder=vit"]).model.net)
    assert all(p.requires_grad for p in net.encoder.vit.parameters())


def test_data_options_share_one_datamodule_default(compose) -> None:
    """Each data option is the shared default plus its dataset: the datamodule keys are
    written once (conf/data/default.yaml), the dataset's in conf/data/dataset/."""
    default = compose(["data=default"]).data
    for data in DATA:
        cfg = compose([f"data={data}"]).data
        assert cfg._target_ == default._target_ and set(cfg) == set(default)
        assert cfg.dataset._target_.startswith("faceparse.data.")
    for path in (CONF_DIR / "data").glob("*.yaml"):
        if path.stem != "default":
            assert "batch_size" not in path.read_text(), path


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_importing_a_command_registers_nothing() -> None:
    """Resolvers are registered when a command runs, not as a side effect of an import."""
    import subprocess
    import sys

    code = ("import faceparse.train, faceparse.bench.__main__, faceparse.stats\n"
            "from omegaconf import OmegaConf\n"
            "from faceparse.cli import RESOLVERS, register_resolvers\n"
            "assert not any(OmegaConf.has_resolver(n) for n in RESOLVERS)\n"
            "register_resolvers()\n"
            "assert all(OmegaConf.has_resolver(n) for n in RESOLVERS)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_compare_files_switch_every_fast_path_option_but_memory_reuse() -> None:
    """What README and BENCHMARKS say the compare files measure: every option of the fast
    path is switched by one of them. Memory reuse is process-wide (a variant in the same
    process cannot switch it back off), so it is compared across two processes instead."""
    import dataclasses
    import re

    switched = set()
    for path in (CONF_DIR / "compare").glob("*.yaml"):
        switched |= set(re.findall(r"fast_path\.(\w+)=", path.read_text()))
    options = {f.name for f in dataclasses.fields(fast_path.FastPath)}
    assert options - switched == {"reuse_cpu_memory"}


def test_the_real_ablation_study_the_experiment_file_advises_is_the_reference_setup(
        compose) -> None:
    """The overrides the comment in ablation_fusion.yaml gives compose to the reference's
    sizes, not the quickstart's 64 px CE + Dice (the experiment comes after data=)."""
    import re

    text = (CONF_DIR / "experiment" / "ablation_fusion.yaml").read_text()
    block = re.search(r"e\.g\.\n((?:#   .*\n)+)", text).group(1)
    line = " ".join(row.removeprefix("#   ") for row in block.splitlines())
    overrides = line.replace("<dinov3 file>", "x.pth").split()
    cfg = compose(["experiment=ablation_fusion", *overrides])
    assert (cfg.data.image_size, cfg.loss.dice_weight, cfg.optimizer.lr) == (512, 0.0, 3e-4)
    assert (cfg.trainer.max_epochs, cfg.cnn.arch, cfg.vit.size) == (30, "vgg19_bn", "large")


@pytest.mark.parametrize(("override", "message"), [
    ("logger=null", "logger=null: the config group logger takes one of its options (csv, "
                    "tensorboard, wandb); to leave it out, write ~logger"),
    ("+data/augment=null", "the config group data/augment takes one of its options (default, "
                           "none); to leave it out, write ~data/augment"),
    ("hydra/launcher=null", "Hydra's config group hydra/launcher takes an option name; leave "
                            "the override out for its default"),
])
def test_a_config_group_set_to_null_is_one_line_naming_its_options(override: str, message: str,
                                                                   capsys) -> None:
    from faceparse.cli import refuse_null_groups

    with pytest.raises(SystemExit):
        refuse_null_groups(["seed=1", override])
    assert message in capsys.readouterr().err
    refuse_null_groups(["optimizer.lr=null", "~logger", "seed=null"])  # values, not groups


def test_logger_null_on_the_command_line_is_refused_as_a_user_sees_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "faceparse.train", "logger=null"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: logger=null: the config group logger takes one of its options (csv, "
        "tensorboard, wandb); to leave it out, write ~logger"]
    assert not (tmp_path / "outputs").exists()


def test_a_top_level_key_added_with_plus_is_said_unread(caplog) -> None:
    """``+foo=1`` (a misspelt ``+ckpt=`` or ``+optimized_metrics=``) trained without a word."""
    from faceparse.cli import warn_added_top_level_keys

    with caplog.at_level("WARNING", logger="faceparse.cli"):
        warn_added_top_level_keys(["+optimized_metrics=val/miou", "+experiment=quickstart",
                                   "+callbacks.extra._target_=x", "++seed=3", "seed=1"])
    warned = [r.getMessage() for r in caplog.records]
    assert warned == ["+optimized_metrics=val/miou adds a key no faceparse command reads (a "
                      "misspelt option?); it is only kept in the run's config"]
