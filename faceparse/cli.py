"""What every command shares: the ``conf/`` folder, the config resolvers, the Hydra main.

Each entry point (``python -m faceparse.<name>``) is a short function over a config, made
a command by :func:`hydra_entry`. Resolvers are registered when a command runs (and in
the job itself, which a launcher may start in a fresh process), never as a side effect
of importing a module.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import hydra
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from faceparse.fast_path import auto_precision
from faceparse.labels import get_scheme
from faceparse.training.optim import fused_default
from faceparse.training.run_folder import run_folder

__all__ = ["CONF_DIR", "register_resolvers", "hydra_entry", "instantiate_option",
           "one_line_errors"]

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
Task = TypeVar("Task", bound=Callable[[DictConfig], Any])

RESOLVERS: dict[str, Callable[..., Any]] = {
    "num_classes": lambda scheme: get_scheme(scheme).num_classes,
    "auto_precision": auto_precision,
    "fused_optimizer": fused_default,
    "run_folder": run_folder,
}


def register_resolvers() -> None:
    """``${num_classes:<scheme>}``, ``${auto_precision:<accelerator>}`` and
    ``${fused_optimizer:<accelerator>,<precision>}``,
    ``${run_folder:<resume>,<default>}``; idempotent."""
    for name, resolver in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def hydra_entry(config_name: str) -> Callable[[Task], Callable[[], Any]]:
    """Make ``task(cfg)`` the command that composes ``conf/<config_name>.yaml``."""

    def decorate(task: Task) -> Callable[[], Any]:
        @functools.wraps(task)
        def job(cfg: DictConfig) -> Any:
            register_resolvers()  # a launcher may run the job in a fresh process
            return task(cfg)

        hydra_main = hydra.main(version_base="1.3", config_path=str(CONF_DIR),
                                config_name=config_name)(job)

        @functools.wraps(task)
        def main() -> Any:
            register_resolvers()  # Hydra resolves some values before the job runs
            return hydra_main()

        return main

    return decorate


def one_line_errors(*errors: type[BaseException]) -> Callable[[Task], Task]:
    """Report ``errors`` (bad input the task refuses) as one ``error:`` line and exit 1.

    A user who typed a wrong option needs the message, not a stack trace;
    ``HYDRA_FULL_ERROR=1`` still shows the trace.
    """

    def decorate(task: Task) -> Task:
        @functools.wraps(task)
        def run(cfg: DictConfig) -> Any:
            try:
                return task(cfg)
            except errors as err:
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                # a KeyError's str() is its repr; the message is its argument
                message = err.args[0] if isinstance(err, KeyError) and err.args else err
                print(f"error: {message}", file=sys.stderr)
                raise SystemExit(1) from None

        return run  # type: ignore[return-value]

    return decorate


def instantiate_option(node: DictConfig) -> Any:
    """``instantiate(node)``, where a bad value is the target's own ValueError or TypeError.

    Hydra wraps what a constructor raises in a multi-line ``InstantiationException``; a
    command's one-line error handling (``fast_path.compile_mode=fastest: use one of ...``)
    needs the constructor's message itself.
    """
    try:
        return instantiate(node)
    except InstantiationException as err:
        if isinstance(err.__cause__, (ValueError, TypeError)):
            raise err.__cause__ from None
        raise
