"""Eval's options checked before the checkpoint is read or the data opened.

A wrong value used to surface late (``tta.scales`` after loading the model and opening the
split), as a traceback naming no option (``'float' object is not iterable``, ``invalid
literal for int()``), or not at all: Hydra reads ``tta.flip=no`` as the string ``"no"``,
which ``bool()`` turns into True. Each check is one ``ValueError`` naming the option as
typed and what would be right, like :mod:`faceparse.training.preflight`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig

from faceparse.option_values import boolean, is_number, shown, whole_number

__all__ = ["EvalOptions", "eval_options", "scale_factors"]


def scale_factors(option: str, value: Any) -> tuple[float, ...]:
    """Positive scale factors; a single number (``tta.scales=1.25``) is a list of one, and
    null or ``[]`` is ``[1.0]`` (no rescaling)."""
    values = list(value) if isinstance(value, (list, tuple, ListConfig)) else \
        [1.0] if value is None else [value]
    if not all(is_number(v) and v > 0 for v in values):
        raise ValueError(f"{option}={shown(value)}: the input scale factors are positive "
                         f"numbers, e.g. {option}=[0.75,1.0,1.25] (one: {option}=1.25)")
    return tuple(float(v) for v in values) or (1.0,)


@dataclass(frozen=True)
class EvalOptions:
    """Eval's options, checked and typed."""

    resolution: str
    flip: bool
    scales: tuple[float, ...]
    worst: int
    image_size: int | None
    use_prepared: bool
    trust_pickle: bool
    run_data: bool


def eval_options(cfg: DictConfig) -> EvalOptions:
    """Check the options ``evaluate`` reads; the first wrong one is a ``ValueError``."""
    if cfg.resolution not in ("model", "original"):
        raise ValueError(f"resolution={shown(cfg.resolution)}: choose model or original")
    image_size = cfg.image_size
    if image_size is not None:
        image_size = whole_number("image_size", image_size, 1,
                                  "the input side in pixels (null: the checkpoint's own)")
    return EvalOptions(
        resolution=str(cfg.resolution),
        flip=boolean("tta.flip", cfg.tta.flip),
        scales=scale_factors("tta.scales", cfg.tta.scales),
        worst=whole_number("worst", cfg.worst, 0,
                           "the number of images in the worst-images grid (0: none)"),
        image_size=image_size,
        use_prepared=boolean("use_prepared", cfg.use_prepared),
        trust_pickle=boolean("trust_pickle", cfg.trust_pickle),
        run_data=boolean("run_data", cfg.run_data),
    )
