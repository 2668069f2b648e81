"""Predict's options checked before anything is read or loaded.

Hydra hands ``trust_pickle=no`` or ``overwrite=off`` to the command as text, and
``bool("no")`` is True: unchecked, a user who typed "no" would unpickle a checkpoint or
overwrite outputs. Each check is one ``ValueError`` naming the option as typed, like
:mod:`faceparse.evaluation.options`.
"""

from __future__ import annotations

from omegaconf import DictConfig

from faceparse.inference.predictor import CROPS, check_batch_size, check_parser_options
from faceparse.option_values import booleans, number, shown, whole_number

__all__ = ["check_predict_options"]


def check_predict_options(cfg: DictConfig) -> None:
    """Refuse the first wrong option of ``faceparse.predict``'s config."""
    booleans("", trust_pickle=cfg.trust_pickle, overwrite=cfg.overwrite,
             save_overlay=cfg.save_overlay, save_probs=cfg.save_probs,
             save_frames=cfg.save_frames)
    check_parser_options(cfg.image_size, cfg.keep_aspect, cfg.margin)
    check_batch_size(cfg.batch_size)
    whole_number("num_workers", cfg.num_workers, 0, "the number of decoding processes")
    if number("alpha", cfg.alpha, 0, "the colour weight in the overlay") > 1:
        raise ValueError(f"alpha={shown(cfg.alpha)}: the colour weight in the overlay is "
                         f"between 0 and 1")
    if cfg.crop not in CROPS:
        raise ValueError(f"crop={shown(cfg.crop)}: choose one of {', '.join(CROPS)}")
    if cfg.boxes is not None and cfg.crop != "box":
        raise ValueError(f"boxes={cfg.boxes} is only read with crop=box (crop={cfg.crop} "
                         f"would parse {'whole photos' if cfg.crop == 'none' else 'detected faces'}"
                         f" and ignore it): add crop=box, or drop boxes=")
