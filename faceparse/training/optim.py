"""Optimisation rules: who trains at which learning rate, and when fused kernels may be used.

Parameter groups come from an explicit protocol: a part that wants its own optimizer
settings (a fine-tuned ViT at a tenth of the learning rate) declares them in a
``param_groups()`` method; every other trainable parameter trains at the base settings,
and frozen parameters never enter the optimizer.

Fused AdamW and gradient clipping: Lightning refuses to clip gradients for a fused
optimizer under mixed precision, because with an fp16 ``GradScaler`` the fused step
unscales internally and the gradients it would clip are still scaled. bf16 and fp32 have
no scaler, so there the gradients are true and the module clips them itself
(:func:`clips_itself`); under fp16 the optimizer is not fused (:func:`fused_default`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from faceparse.fast_path import on_gpu

__all__ = [
    "DeclaresParamGroups",
    "param_groups",
    "build_optimizer",
    "fused_default",
    "clips_itself",
    "clip_gradients",
]


@runtime_checkable
class DeclaresParamGroups(Protocol):
    """A model part with its own optimizer settings.

    ``param_groups()`` returns ``[{"params": [...], "lr_scale": 0.1, ...}]``: ``lr_scale``
    multiplies the base learning rate; other keys are passed to the optimizer as they are.
    """

    def param_groups(self) -> list[dict[str, Any]]: ...


def param_groups(module: nn.Module) -> list[dict[str, Any]]:
    """The trainable parameters of ``module``, grouped by the settings their part declares.

    Groups keep the order in which ``module.parameters()`` first meets them.
    """
    declared: dict[int, dict[str, Any]] = {}
    for part in module.modules():
        if isinstance(part, DeclaresParamGroups):
            for group in part.param_groups():
                options = {k: v for k, v in group.items() if k != "params"}
                for p in group["params"]:
                    declared.setdefault(id(p), options)
    groups: dict[tuple, dict[str, Any]] = {}
    for p in module.parameters():
        if p.requires_grad:
            options = {"lr_scale": 1.0, **declared.get(id(p), {})}
            key = tuple(sorted(options.items()))
            groups.setdefault(key, {**options, "params": []})["params"].append(p)
    return list(groups.values())


def build_optimizer(factory: Callable[..., torch.optim.Optimizer],
                    module: nn.Module) -> torch.optim.Optimizer:
    """Complete a ``_partial_`` optimizer with the parameter groups; scale their rates."""
    lr = getattr(factory, "keywords", {}).get("lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float))):
        raise ValueError(f"optimizer.lr={lr!r}: use a positive number, e.g. optimizer.lr=3e-4")
    optimizer = factory(params=param_groups(module))
    for group in optimizer.param_groups:
        group["lr"] *= group["lr_scale"]
    return optimizer


def fused_default(accelerator: str, precision: str) -> bool:
    """Fused optimizer kernels on a GPU or a CPU, unless an fp16 gradient scaler is in play.

    Fused AdamW updates each parameter in one pass instead of a dozen ``foreach`` kernels
    over the whole list: on a 2-core CPU the quickstart net's step took 3.3 ms instead of
    13 (BENCHMARKS.md). Any other accelerator keeps torch's default.
    """
    if str(precision).startswith("16"):
        return False
    return on_gpu(accelerator) or accelerator in ("auto", "cpu")


def clips_itself(optimizer: torch.optim.Optimizer, scaler: object | None) -> bool:
    """Whether the module must clip (a fused optimizer, true gradients) instead of Lightning."""
    return bool(optimizer.defaults.get("fused")) and scaler is None


def clip_gradients(params: Iterable[nn.Parameter], value: float | None,
                   algorithm: str | None) -> None:
    """Clip by global norm (default) or by value, as Lightning's ``gradient_clip_*`` says;
    ``value`` <= 0 (or None) is no clipping, as in Lightning (a negative one would flip the
    gradients)."""
    if not value or value <= 0:
        return
    params = list(params)
    if algorithm == "value":
        nn.utils.clip_grad_value_(params, value)
    else:
        nn.utils.clip_grad_norm_(params, value)
