"""Train a face parser: ``python -m faceparse.train [group=option ...] [key=value ...]``.

Reads top to bottom: seed, instantiate data/model/callbacks/loggers/trainer, fit, test
on the best checkpoint, return the metric a sweeper optimises. ``ckpt_path`` resumes one
of our full checkpoints exactly; any other supported checkpoint (decoder-only export, the
original FaceParsing project's) initialises the weights and training starts afresh.
Checkpoints are read data-only; ``trust_pickle=true`` opts out for a trusted file.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from faceparse.checkpoints import is_resumable, load_net_weights
from faceparse.config import register_resolvers
from faceparse.models.checkpoint_io import safe_globals

log = logging.getLogger(__name__)
register_resolvers()
# A frozen ViT stays in eval mode on purpose; Lightning would warn about it every fit.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a ``callbacks``/``logger`` group (a name -> config map)."""
    return [instantiate(c) for c in (group or {}).values() if c and "_target_" in c]


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit and test as the config says; return the logged metrics as floats."""
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    model.net_config = OmegaConf.to_container(cfg.model.net, resolve=True)
    trust_pickle = bool(cfg.trust_pickle)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path and not is_resumable(ckpt_path, trust_pickle):
        log.info("%s is not a full faceparse checkpoint: loading its weights only", ckpt_path)
        load_net_weights(model.net, ckpt_path, model.scheme, trust_pickle)
        ckpt_path = None
    callbacks = instantiate_all(cfg.get("callbacks"))
    loggers = instantiate_all(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    try:
        if cfg.train:
            with safe_globals(ckpt_path or "checkpoint"):
                trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path,
                            weights_only=not trust_pickle)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if cfg.test:
            checkpoint = trainer.checkpoint_callback
            best = checkpoint.best_model_path if checkpoint else ""
            if not best:
                log.warning("no best checkpoint; testing the current weights")
            with safe_globals(best or "checkpoint"):
                trainer.test(model, datamodule=datamodule, ckpt_path=best or None,
                             weights_only=True)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    finally:
        for logger in loggers:
            logger.finalize("success")
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    value = metrics.get(cfg.get("optimized_metric") or "")
    if value is not None:
        log.info("%s = %.4f", cfg.optimized_metric, value)
    return value


if __name__ == "__main__":
    main()
