"""Build an object from its config, with a bad value reported as the constructor's own
one-line error rather than Hydra's nested ``InstantiationException``."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig

__all__ = ["instantiate_option"]


def instantiate_option(node: DictConfig, option: str | None = None, **kwargs: Any) -> Any:
    """``instantiate(node, **kwargs)``, where a bad value is the target's own ValueError or
    TypeError, and Lightning's ``MisconfigurationException`` (``trainer=gpu`` without a GPU,
    ``callbacks.model_checkpoint.mode=maximum``) a ValueError.

    Hydra wraps what a constructor raises in a multi-line ``InstantiationException``, once
    per level of nesting (the model's net's encoder's ViT); a command's one-line error
    handling (``fast_path.compile_mode=fastest: use one of ...``, the DINOv3 weights that
    are missing) needs the innermost constructor's message itself. With ``option`` (the
    config key of ``node``), the message starts with it: Lightning's do not name the option.
    """
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while isinstance(cause, InstantiationException):
            cause = cause.__cause__
        if isinstance(cause, MisconfigurationException) or (
                option and isinstance(cause, (ValueError, TypeError))):
            raise ValueError(f"{option}: {cause}" if option else str(cause)) from None
        if isinstance(cause, TypeError):  # an option the class does not take (+vit.foo=1)
            raise ValueError(str(cause)) from None
        if isinstance(cause, (ValueError, FileNotFoundError)):
            raise cause from None
        raise
