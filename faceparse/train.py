"""Train a face parser: ``python -m faceparse.train [group=option ...] [key=value ...]``.

Reads top to bottom: seed, instantiate data/model/callbacks/loggers/trainer, fit, test
on the best checkpoint, return the metric a sweeper optimises. ``ckpt_path`` resumes one
of our full checkpoints exactly; any other supported checkpoint (decoder-only export, the
original FaceParsing project's) initialises the weights and training starts afresh.
``train=false`` tests ``ckpt_path`` and nothing else. Checkpoints are read data-only;
``trust_pickle=true`` opts out for a trusted file. ``resume=auto|<run folder>`` continues a
run in its own folder (:mod:`faceparse.training.run_folder`); under DDP only rank 0 writes.
A refused option or input prints as one ``error:`` line (and is recorded in ``status.json``),
except a refused ``resume=``, which leaves the run it would have continued as it was.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, ListConfig, OmegaConf

from faceparse.checkpoints import start_from
from faceparse.cli import (
    CONF_DIR,
    command_line_keys,
    hydra_entry,
    instantiate_option,
    keep_run_folder,
    one_line_errors,
)
from faceparse.fast_path import on_gpu
from faceparse.hardware import pin_cpu_policy
from faceparse.labels import get_scheme
from faceparse.models.vgg import refuse_untrained_frozen_norms, warn_random_cnn
from faceparse.option_values import booleans, shown
from faceparse.safe_load import safe_globals
from faceparse.training.best_checkpoint import KeepBestCheckpoints
from faceparse.training.distributed import is_rank_zero, quiet_other_ranks
from faceparse.training.job_status import record_job
from faceparse.training.loggers import finish_wandb, log_config
from faceparse.training.preflight import (
    check_optimizer,
    check_resumed_optimizer,
    check_training_options,
)
from faceparse.training.rank_seeds import RankEpochSeeds
from faceparse.training.resume_run import continue_requeued, resume_config
from faceparse.training.run_folder import (
    CONFIG_FILE,
    refuse_existing_run,
    write_hydra_files,
)
from faceparse.training.sweep_ranks import ranks_join_this_job

log = logging.getLogger(__name__)


def instantiate_all(group: DictConfig | None, name: str | None = None) -> list[Any]:
    """Instantiate every entry of a ``callbacks``/``logger`` group (a name -> config map);
    with the group's ``name``, a value an entry's class refuses is named
    (``callbacks.<entry>: ...``)."""
    return [instantiate_option(c, f"{name}.{key}" if name else None)
            for key, c in (group or {}).items() if c and "_target_" in c]


def _test_target(trainer: L.Trainer, trained: bool, resume: str | None) -> str | None:
    """The checkpoint to test: the best of this run, or the given one (None: the weights
    already in the module, loaded from a weights-only file or left by training)."""
    if not trained:
        return resume
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if not best:
        log.warning("no best checkpoint (no ModelCheckpoint, or fast_dev_run): testing the "
                    "weights as training left them")
    return best or None


def refuse_unused_fusion(cfg: DictConfig) -> None:
    """Only the two-branch encoder reads ``fusion``; with one branch any setting but the
    reference (``conf/fusion/vit_only.yaml``) would be ignored silently, so it is refused:
    a bad combination, which a sweep records as a failed job."""
    if "fusion" not in cfg or "fusion" in cfg.encoder:
        return
    reference = OmegaConf.load(CONF_DIR / "fusion" / "vit_only.yaml").fusion
    if OmegaConf.to_container(cfg.fusion) != OmegaConf.to_container(reference):
        raise ValueError(
            f"fusion (op {cfg.fusion.op._target_}, vit_into {list(cfg.fusion.vit_into)}) "
            f"combines the CNN and ViT branches, but encoder {cfg.encoder._target_} has one "
            f"branch: use encoder=dual, or the reference fusion=vit_only fusion.vit_into=[16]"
        )


# ViT options that only shape a ViT's output: set without one, they would be ignored
VIT_ONLY_OPTIONS = ("layers", "finetune_blocks")


def refuse_unused_vit(cfg: DictConfig) -> None:
    """An encoder without a ViT (``encoder=cnn``) ignores ``vit.layers`` and
    ``vit.finetune_blocks``: set otherwise than the default, a sweep over them would train
    identical jobs under different names. Refused, as :func:`refuse_unused_fusion` does."""
    if "vit" not in cfg or "vit" in cfg.encoder:
        return
    default = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "vit" / "dinov3.yaml"))
    for option in VIT_ONLY_OPTIONS:
        value = OmegaConf.select(cfg, f"vit.{option}")
        plain = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
        if plain != default[option]:
            raise ValueError(
                f"vit.{option}={shown(value)} shapes the ViT's output, but encoder "
                f"{cfg.encoder._target_} has no ViT: use encoder=vit or encoder=dual, or "
                f"leave vit.{option} at its default ({shown(default[option])})")


def warn_unused_backbone(cfg: DictConfig, overrides: Sequence[str] | None) -> None:
    """``vit.*`` typed for an encoder without a ViT (``encoder=cnn vit.size=base``), or
    ``cnn.*`` for one without the CNN, is not used: said once, since a sweep over it
    trains identical jobs under different names. A warning, not a refusal: a grid over
    ``encoder=cnn,dual vit.size=small,base`` is a fair command."""
    uses = {"vit": "vit" in cfg.encoder,
            "cnn": "cnn" in cfg.encoder or ("cnn" in cfg and
                                            cfg.encoder.get("_target_") == cfg.cnn._target_)}
    for override in overrides or ():
        key = override.partition("=")[0].lstrip("+~")
        branch = key.partition(".")[0]
        if branch in uses and not uses[branch] and key.partition(".")[2] not in VIT_ONLY_OPTIONS:
            log.warning("%s is not used: encoder %s has no %s branch (a sweep over it trains "
                        "identical jobs)", override, cfg.encoder.get("_target_"),
                        branch.upper())


def check_labels(cfg: DictConfig) -> None:
    """Refuse an unknown ``data.labels`` before the config is resolved: the class count
    derives from it, and the resolver's error would not name the option."""
    try:
        get_scheme(cfg.data.labels)
    except KeyError as err:
        raise ValueError(f"data.labels={cfg.data.labels}: {err.args[0]}") from None


def refuse_lr_monitor_without_logger(callbacks: list, loggers: list) -> None:
    """Lightning's LearningRateMonitor refuses a trainer without a logger only once
    training starts, as a traceback: say so before the run folder is kept."""
    if not loggers and any(isinstance(c, LearningRateMonitor) for c in callbacks):
        raise ValueError("callbacks.lr_monitor logs the learning rates to a logger, and this "
                         "run has none: give one (logger=csv), or drop the monitor "
                         "(~callbacks.lr_monitor)")


def _best_score(trainer: L.Trainer) -> dict[str, float]:
    """``{"best/<monitor>": score}`` of the best checkpoint: what a sweep compares, not the
    last epoch's value."""
    callback = trainer.checkpoint_callback
    score = getattr(callback, "best_model_score", None)
    return {} if score is None else {f"best/{callback.monitor}": float(score)}


def resumed(cfg: DictConfig) -> DictConfig:
    """The config to train with: for ``resume=``, the run's own once :func:`resume_config`
    accepts this command (and then Hydra's ``.hydra/`` files, left to the job, are written
    into the run folder); else ``cfg``, once its folder holds no run yet
    (:func:`refuse_existing_run`). Before it returns, nothing is written there. A job SLURM
    requeued continues its own run (:func:`continue_requeued`)."""
    cfg = continue_requeued(cfg)
    if not cfg.get("resume"):
        refuse_existing_run(Path(cfg.paths.output_dir))
        write_hydra_files(cfg)
        return cfg
    accepted = resume_config(cfg, command_line_keys())
    write_hydra_files(cfg)
    return accepted


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit and test as the config says; return the logged metrics as floats."""
    return fit(resumed(cfg))


def refuse_other_input_size(net: torch.nn.Module, image_size: int) -> None:
    """``data.image_size`` the encoders cannot take, refused before the run starts (the
    model would refuse the first batch)."""
    multiple = int(getattr(net, "size_multiple", 1))
    if isinstance(image_size, int) and image_size % multiple:
        up = -(-image_size // multiple) * multiple
        raise ValueError(f"data.image_size={image_size}: not a multiple of {multiple} (the "
                         f"coarsest stride of the encoders); use e.g. data.image_size={up}")


def fit(cfg: DictConfig) -> dict[str, float]:
    """:func:`train` on a config :func:`resumed` has already turned into the run's own."""
    booleans("", train=cfg.train, test=cfg.test, trust_pickle=cfg.trust_pickle)
    if not cfg.train and not cfg.get("ckpt_path"):
        raise ValueError("train=false tests a checkpoint, and none is given: set "
                         "ckpt_path=<run>/checkpoints/<file>.ckpt (or drop train=false)")
    check_labels(cfg)
    refuse_unused_fusion(cfg)
    refuse_unused_vit(cfg)
    warn_unused_backbone(cfg, HydraConfig.get().overrides.task
                         if HydraConfig.initialized() else None)
    check_training_options(cfg)
    seed = L.seed_everything(cfg.seed, workers=True)
    if not on_gpu(str(cfg.trainer.get("accelerator", "auto"))):
        pin_cpu_policy()  # DDP ranks and later jobs choose as this process did
    output_dir = Path(cfg.paths.output_dir)
    if is_rank_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg, resolve=True))

    datamodule = instantiate_option(cfg.data)
    model = instantiate_option(cfg.model)
    if cfg.train:
        check_optimizer(model)
    trust_pickle = cfg.trust_pickle
    point = None
    if cfg.get("ckpt_path"):
        point = start_from(cfg.ckpt_path, model.net, model.scheme, trust_pickle)
    resume = point.path if point else None
    if cfg.train and point:  # Lightning restores the saved optimizer: it must be this one
        check_resumed_optimizer(model, point.optimizer_setup, cfg.ckpt_path)
    if cfg.train and resume is None:  # a resumed run brings the statistics it froze
        refuse_untrained_frozen_norms(model.net)
    if cfg.train and not cfg.get("ckpt_path"):
        warn_random_cnn(model.net)
    callbacks = instantiate_all(cfg.get("callbacks"), "callbacks")
    callbacks.append(RankEpochSeeds(seed))  # DDP ranks resume their own random streams
    if resume:  # in a new folder, Lightning would forget which checkpoint was the best
        callbacks.append(KeepBestCheckpoints())
    loggers = instantiate_all(cfg.get("logger"), "logger")
    refuse_lr_monitor_without_logger(callbacks, loggers)
    trainer: L.Trainer = instantiate_option(cfg.trainer, "trainer", callbacks=callbacks,
                                            logger=loggers)
    refuse_other_input_size(model.net, cfg.data.image_size)
    stages = (("train", "val") if cfg.train else ()) + (("test",) if cfg.test else ())
    datamodule.open_splits(stages, trainer.world_size)  # missing data: no run folder
    keep_run_folder()  # what fails from here on failed a run: its folder stays
    try:
        with ranks_join_this_job():  # a sweep job's DDP ranks start as this job
            log_config(loggers, cfg)
            if cfg.train:
                with safe_globals(resume or "checkpoint"):
                    trainer.fit(model, datamodule=datamodule, ckpt_path=resume,
                                weights_only=not trust_pickle)
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
            metrics.update(_best_score(trainer))
            if cfg.test:
                tested = _test_target(trainer, cfg.train, resume)
                with safe_globals(tested or "checkpoint"):
                    trainer.test(model, datamodule=datamodule, ckpt_path=tested,
                                 weights_only=not trust_pickle)
                metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    finally:
        for logger in loggers:
            logger.finalize("success")
        finish_wandb()  # each job of a sweep gets its own W&B run
    return metrics


@hydra_entry("train")
@one_line_errors(ValueError, KeyError, FileNotFoundError, ImportError)
def main(cfg: DictConfig) -> float | None:
    # A frozen ViT stays in eval mode on purpose; Lightning would warn about it every fit.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    quiet_other_ranks()
    # a failed sweep job is recorded and returns None; a refused resume= records nothing
    value = record_job(fit, cfg, accept=resumed)
    if value is not None:
        kept = (OmegaConf.select(cfg, "callbacks.model_checkpoint") is not None
                and not OmegaConf.select(cfg, "trainer.fast_dev_run"))  # chooses no best
        log.info("%s (%s) = %.4f", cfg.optimized_metric,
                 "best checkpoint" if kept else "last validation", value)
    return value


if __name__ == "__main__":
    main()
