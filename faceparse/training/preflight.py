"""Checks of a training command that would otherwise fail late, or unclearly.

Each mistake here used to surface after the run folder was kept (with a failed status and
logs), some only after a whole epoch (a misspelt ``optimized_metric``), and as a traceback
from Lightning or torch that names no option. Checked before any work, each is one
``ValueError`` naming the option and what would be right.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from faceparse.fast_path import on_gpu
from faceparse.labels import get_scheme
from faceparse.option_values import is_number, is_whole, whole_number
from faceparse.training.module import FaceParsingModule, monitorable
from faceparse.training.optim import build_optimizer

__all__ = ["check_training_options", "check_optimizer", "check_resumed_optimizer"]

# the keys of a parameter group that tell optimizer classes apart (AdamW's betas, SGD's
# momentum, ...): flags torch adds between versions must not refuse an older checkpoint
_CLASS_KEYS = {"betas", "momentum", "nesterov", "dampening", "alpha", "centered", "rho",
               "lr_decay", "amsgrad"}
# the saved setup values a command may set, with the option that sets them
_SETUP_OPTIONS = {"initial_lr": "optimizer.lr", "weight_decay": "optimizer.weight_decay",
                  "betas": "optimizer.betas", "momentum": "optimizer.momentum",
                  "eps": "optimizer.eps", "nesterov": "optimizer.nesterov"}

NO_LIMIT = -1  # Lightning's "no limit" for max_epochs and max_steps


def check_training_options(cfg: DictConfig) -> None:
    """The options :func:`faceparse.train.fit` needs right before it builds anything."""
    scheme = get_scheme(cfg.data.labels)
    check_run_numbers(cfg)
    check_wandb_options(cfg.get("logger"))
    check_class_weights(cfg.get("loss"), cfg.data.labels, scheme.class_names,
                        stats_hint(cfg.data))
    if not cfg.train:
        return
    check_length(cfg.trainer, scheduled=OmegaConf.select(cfg, "model.scheduler") is not None)
    check_batch_for_norms(OmegaConf.select(cfg, "data.batch_size"),
                          OmegaConf.select(cfg, "decoder.attention_refinement"))
    names = monitorable(scheme)
    check_monitor("optimized_metric", cfg.get("optimized_metric"), names)
    for name, callback in (cfg.get("callbacks") or {}).items():
        if callback and "monitor" in callback:
            check_monitor(f"callbacks.{name}.monitor", callback.monitor, names)
    check_best_is_optimized(cfg)


def check_run_numbers(cfg: DictConfig) -> None:
    """Numbers that reached torch, pydantic or Lightning unchecked: ``seed=1.5`` trained as
    seed 1 under its own name, ``data.image_size=-32`` was albumentations' validation
    dump, ``data.num_workers=-1`` a traceback in a kept run folder, a negative
    ``trainer.gradient_clip_val`` flipped every gradient (ascent), and SyncBatchNorm on a
    CPU stopped both DDP ranks after they started."""
    seed = cfg.get("seed")
    if not (isinstance(seed, str) and seed.strip().isdigit()):  # ${oc.env:SEED} is text
        whole_number("seed", seed, 0, "the random seed")
    data = cfg.get("data") or {}
    size = data.get("image_size")
    if size is not None and not isinstance(size, ListConfig):
        whole_number("data.image_size", size, 1, "the square side in pixels (a multiple of 16)")
    if data.get("num_workers") is not None:
        whole_number("data.num_workers", data.num_workers, 0,
                     "the loader processes (0: load in the training process)")
    trainer = cfg.get("trainer") or {}
    clip = trainer.get("gradient_clip_val")
    if clip is not None and (not is_number(clip) or clip < 0):
        raise ValueError(f"trainer.gradient_clip_val={clip}: the largest gradient norm (or "
                         "value), a number >= 0; 0 or null for no clipping")
    if trainer.get("sync_batchnorm") and not on_gpu(str(trainer.get("accelerator", "auto"))):
        raise ValueError("trainer.sync_batchnorm=true needs CUDA GPUs (SyncBatchNorm), and this "
                         f"run trains on trainer.accelerator={trainer.get('accelerator')}: use "
                         "trainer=ddp_cpu for DDP on CPUs, or trainer.sync_batchnorm=false")


def check_wandb_options(loggers: DictConfig | None) -> None:
    """``logger.wandb`` options that neither faceparse's factory, Lightning's
    ``WandbLogger`` nor ``wandb.init`` take (``+logger.wandb.tag=[x]``): refused here, not
    as wandb's TypeError traceback when the first hyperparameters are logged."""
    entry = (loggers or {}).get("wandb")
    if not entry or not str(entry.get("_target_", "")).endswith("loggers.wandb_logger"):
        return
    import inspect

    import wandb
    from lightning.pytorch.loggers import WandbLogger

    from faceparse.training.loggers import wandb_logger

    taken = {name for fn in (wandb_logger, WandbLogger.__init__, wandb.init)
             for name, param in inspect.signature(fn).parameters.items()
             if param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL)}
    taken -= {"settings"}  # faceparse's own: no prompt, no console capture, a long timeout
    unknown = sorted(key for key in entry if not str(key).startswith("_") and key not in taken)
    if unknown:
        raise ValueError(f"logger.wandb.{unknown[0]}: not an option of the W&B logger (it takes "
                         "project, entity, name, group, tags, job_type, notes, offline, ... as "
                         "wandb.init does)")


def check_best_is_optimized(cfg: DictConfig) -> None:
    """The best checkpoint is the one tested and whose score a job returns to its sweep, as
    that of ``optimized_metric``: a ``model_checkpoint`` chosen on another metric would
    test one checkpoint and report another's score."""
    checkpoint = (cfg.get("callbacks") or {}).get("model_checkpoint")
    monitor = checkpoint.get("monitor") if checkpoint else None
    if monitor is not None and monitor != cfg.get("optimized_metric"):
        raise ValueError(
            f"callbacks.model_checkpoint.monitor={monitor} differs from "
            f"optimized_metric={cfg.get('optimized_metric')}: the best checkpoint is tested and "
            f"its score returned as optimized_metric's; set optimized_metric={monitor} instead "
            f"(the checkpoint's monitor and mode follow it)")


def check_batch_for_norms(batch_size: Any, attention_refinement: Any) -> None:
    """The decoder's attention refinement normalises a pooled 1x1 map over the batch
    (BatchNorm): in training that needs two samples per batch and process, else PyTorch
    stops the first step with "Expected more than 1 value per channel"."""
    if attention_refinement and batch_size == 1:
        raise ValueError(
            "data.batch_size=1: training normalises the decoder's pooled attention over the "
            "batch (BatchNorm), which needs at least 2 samples per batch (per process under "
            "DDP); use data.batch_size=2 or more, or decoder.attention_refinement=false")


def check_length(trainer: DictConfig, scheduled: bool) -> None:
    """``trainer.max_epochs`` / ``max_steps``: whole numbers, -1 for no limit; with a
    learning-rate schedule (its decay spans the run) at least one of them a limit."""
    epochs, steps = trainer.get("max_epochs"), trainer.get("max_steps", NO_LIMIT)
    if epochs is not None and not (is_whole(epochs) and epochs >= NO_LIMIT):
        raise ValueError(f"trainer.max_epochs={epochs}: the number of epochs is a whole number "
                         ">= 0, or -1 for no epoch limit (with trainer.max_steps or "
                         "trainer.max_time)")
    if steps is not None and not (is_whole(steps) and steps >= NO_LIMIT):
        raise ValueError(f"trainer.max_steps={steps}: the number of optimizer steps is a whole "
                         "number >= 0, or -1 for no step limit")
    unlimited = epochs == NO_LIMIT and steps in (None, NO_LIMIT)
    if scheduled and unlimited:
        limit = "trainer.max_time" if trainer.get("max_time") else "nothing"
        raise ValueError("trainer.max_epochs=-1 and trainer.max_steps=-1 (the run stops on "
                         f"{limit}) leave the learning-rate schedule no length to decay over: "
                         "set trainer.max_steps=<steps> (trainer.max_time may still stop it "
                         "sooner), or scheduler=none for a constant learning rate")


def check_monitor(option: str, metric: str | None, names: Sequence[str]) -> None:
    """``metric`` must be one the module logs: a misspelt one fails after the first epoch
    (checkpointing), or leaves a sweep without its value."""
    if metric is None or metric in names:
        return
    headline = [n for n in names if n.count("/") == 1]
    classes = dict.fromkeys(n.rsplit("/", 1)[1] for n in names if n.count("/") == 2)
    raise ValueError(f"{option}={metric}: training logs no such metric; use one of "
                     f"{', '.join(headline)}, val/f1/<class> or val/iou/<class> with a class "
                     f"of the label scheme ({', '.join(classes)})")


def stats_hint(data: DictConfig) -> str:
    """The stats command that counts this run's own data (stats' default is synthetic
    faces, whose weights would be wrong for a real dataset)."""
    choice = None
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("data")
    root = data.get("root")
    return (f"python -m faceparse.stats data={choice or '<your dataset>'}"
            f"{f' data.root={root}' if root else ''} data.labels={data.labels}")


def check_class_weights(loss: DictConfig | None, labels: str,
                        class_names: Sequence[str], hint: str | None = None) -> None:
    """One CE weight per class of the scheme, in its order: torch's own error comes at the
    first step and names neither the option nor the class count. ``hint``: the stats
    command for this run's data."""
    weights = None if loss is None else loss.get("class_weights")
    if weights is None:
        return
    count = len(class_names)
    if not isinstance(weights, (ListConfig, list)) or len(weights) != count:
        given = f"{len(weights)} weights" if isinstance(weights, (ListConfig, list)) else weights
        raise ValueError(f"loss.class_weights ({given}): data.labels={labels} has {count} "
                         f"classes ({', '.join(class_names)}), one weight each in that order; "
                         f"{hint or f'python -m faceparse.stats data.labels={labels}'} "
                         f"counts them on your data")


def check_resumed_optimizer(model: FaceParsingModule, saved: dict[str, Any], path: str) -> None:
    """``ckpt_path=`` continues the checkpoint's optimizer and schedule as saved: refuse a
    command whose optimizer differs (another class, other parameter groups, another rate or
    decay) before the run starts. Lightning would fail with a torch message naming no option
    (``error: momentum``), or silently keep the saved values while the run's config records
    the command's (a sweep over ``optimizer.lr`` trained identical jobs)."""
    states = saved.get("optimizer_states") or []
    if not states:
        return
    built = build_optimizer(model.optimizer_factory, model).param_groups
    groups = states[0].get("param_groups", [])
    counts = ([len(g["params"]) for g in groups], [len(g["params"]) for g in built])
    setups = ([sorted(set(g) & _CLASS_KEYS) for g in groups],
              [sorted(set(g) & _CLASS_KEYS) for g in built])
    fresh = (f"to start from its weights with another optimizer, train from its decoder-only "
             f"export instead (python -m faceparse.export_decoder ckpt={path} out=<file>)")
    if counts[0] != counts[1] or setups[0] != setups[1]:
        raise ValueError(
            f"ckpt_path={path} continues its own optimizer state ({len(groups)} parameter "
            f"group(s) of {counts[0]} tensors, settings {setups[0][0] if setups[0] else []}), "
            f"and this command's optimizer has {len(built)} of {counts[1]} (settings "
            f"{setups[1][0] if setups[1] else []}): keep the run's optimizer= and vit.* "
            f"options; {fresh}")
    differing = sorted({_SETUP_OPTIONS[key] for old, new in zip(groups, built, strict=True)
                        for key in _SETUP_OPTIONS
                        if key in old and _differs(old[key], new.get(key, new.get("lr")))})
    schedules = saved.get("lr_schedulers") or [{}]
    saved_floor = next(iter(schedules[0].get("lr_lambdas") or [{}]), {}).get("min_lr_ratio")
    floor = getattr(model.scheduler_factory, "keywords", {}).get("min_lr_ratio")
    if saved_floor is not None and floor is not None and _differs(saved_floor, floor):
        differing.append("scheduler.min_lr_ratio")
    if differing:
        raise ValueError(
            f"ckpt_path={path} continues its own optimizer state, and {', '.join(differing)} "
            f"differ from the values it was trained with: drop them from the command (or set "
            f"them as the run had them); {fresh}")


def _differs(saved: Any, configured: Any) -> bool:
    """Saved and configured optimizer values compared as numbers (tuples item by item)."""
    if isinstance(saved, (list, tuple)) and isinstance(configured, (list, tuple)):
        return len(saved) != len(configured) or any(
            _differs(a, b) for a, b in zip(saved, configured, strict=True))
    if isinstance(saved, (int, float)) and isinstance(configured, (int, float)):
        return abs(float(saved) - float(configured)) > 1e-12 * max(1.0, abs(float(saved)))
    return saved != configured


def check_optimizer(model: FaceParsingModule) -> None:
    """Build the optimizer and schedule once, as :meth:`FaceParsingModule.configure_optimizers`
    will: a value they refuse (``optimizer.lr=-1``) is refused before the run starts."""
    try:
        optimizer = build_optimizer(model.optimizer_factory, model)
    except (ValueError, TypeError) as err:
        raise ValueError(str(err) if str(err).startswith("optimizer.")
                         else f"optimizer: {err}") from None
    if model.scheduler_factory is not None:
        try:
            model.scheduler_factory(optimizer=optimizer, total_steps=1)
        except (ValueError, TypeError) as err:
            raise ValueError(str(err) if str(err).startswith("scheduler.")
                             else f"scheduler: {err}") from None
