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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import hydra
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from faceparse.fast_path import auto_precision
from faceparse.labels import get_scheme
from faceparse.training.optim import fused_default
from faceparse.training.run_folder import hydra_subdir, run_folder

__all__ = ["CONF_DIR", "register_resolvers", "hydra_entry", "instantiate_option",
           "one_line_errors", "report_error", "refuse_missing_sweeps"]

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
Task = TypeVar("Task", bound=Callable[[DictConfig], Any])

RESOLVERS: dict[str, Callable[..., Any]] = {
    "num_classes": lambda scheme: get_scheme(scheme).num_classes,
    "auto_precision": auto_precision,
    "fused_optimizer": fused_default,
    "run_folder": run_folder,
    "hydra_subdir": hydra_subdir,
}


def register_resolvers() -> None:
    """``${num_classes:<scheme>}``, ``${auto_precision:<accelerator>}`` and
    ``${fused_optimizer:<accelerator>,<precision>}``,
    ``${run_folder:<resume>,<default>}``, ``${hydra_subdir:<resume>}``; idempotent."""
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
            refuse_missing_sweeps(sys.argv[1:])
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
                report_error(err)

        return run  # type: ignore[return-value]

    return decorate


def report_error(err: BaseException) -> NoReturn:
    """Print ``err`` as one ``error:`` line and exit 1."""
    # a KeyError's str() is its repr; the message is its argument
    message = err.args[0] if isinstance(err, KeyError) and err.args else err
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1) from None


# the config groups whose options select the Optuna sweeper (hparams_search=optuna,
# hydra/sweeper=resumable_optuna or the plugin's own hydra/sweeper=optuna)
SWEEPER_GROUPS = ("hparams_search", "hydra/sweeper")


def refuse_missing_sweeps(overrides: Sequence[str]) -> None:
    """Refuse a command line that asks for the Optuna sweeper without the sweeps extra.

    Hydra would stop later with its own words: ``Could not load 'hydra/sweeper/optuna'``
    without the plugin, ``Error locating target 'optuna.samplers.TPESampler'`` without
    optuna (it builds the sampler before the sweeper, so no sweeper class can say it).
    Only the command line is read: a config that selects the sweeper itself gets Hydra's
    error. ``HYDRA_FULL_ERROR=1`` raises the ImportError instead.
    """
    for override in overrides:
        key, sep, value = override.partition("=")
        if not (sep and key.lstrip("+~") in SWEEPER_GROUPS and "optuna" in value):
            continue
        from hydra_plugins.faceparse_sweepers.resumable_optuna import require_sweeps_extra

        try:
            require_sweeps_extra(override)
        except ImportError as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            report_error(err)


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
