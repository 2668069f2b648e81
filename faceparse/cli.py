"""What every command shares: the ``conf/`` folder, the config resolvers, the Hydra main.

Each entry point (``python -m faceparse.<name>``) is a short function over a config, made
a command by :func:`hydra_entry`. Resolvers are registered when a command runs (and in
the job itself, which a launcher may start in a fresh process), never as a side effect
of importing a module.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import hydra
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import (
    create_automatic_config_search_path,
    detect_calling_file_or_module_from_task_function,
    get_args_parser,
)
from hydra.core.config_search_path import SearchPathQuery
from hydra.core.hydra_config import HydraConfig
from hydra.errors import MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

from faceparse.fast_path import auto_precision
from faceparse.instantiation import instantiate_option
from faceparse.labels import get_scheme
from faceparse.metrics import metric_mode
from faceparse.training.optim import fused_default
from faceparse.training.run_folder import (
    command_keys,
    discard_refused_run,
    hydra_subdir,
    keep_run_folder,
    run_folder,
)
from faceparse.training.run_naming import job_folder, sweep_group

__all__ = ["CONF_DIR", "command_line_keys", "register_resolvers", "hydra_entry",
           "instantiate_option", "one_line_errors", "report_error", "refuse_missing_sweeps",
           "refuse_configured_sweeper", "keep_run_folder", "discard_refused_run"]

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
Task = TypeVar("Task", bound=Callable[[DictConfig], Any])

RESOLVERS: dict[str, Callable[..., Any]] = {
    "num_classes": lambda scheme: get_scheme(scheme).num_classes,
    "auto_precision": auto_precision,
    "fused_optimizer": fused_default,
    "run_folder": run_folder,
    "hydra_subdir": hydra_subdir,
    "job_folder": job_folder,
    "metric_mode": metric_mode,
    "sweep_group": sweep_group,
}


def register_resolvers() -> None:
    """``${num_classes:<scheme>}``, ``${auto_precision:<accelerator>}`` and
    ``${fused_optimizer:<accelerator>,<precision>}``,
    ``${run_folder:<resume>,<default>}``, ``${hydra_subdir:<resume>}``,
    ``${job_folder:<number>,<overrides>}``, ``${metric_mode:<metric>[,optuna]}``,
    ``${sweep_group:<name>}``; idempotent."""
    for name, resolver in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def hydra_entry(config_name: str) -> Callable[[Task], Callable[[], Any]]:
    """Make ``task(cfg)`` the command that composes ``conf/<config_name>.yaml``."""

    def decorate(task: Task) -> Callable[[], Any]:
        @functools.wraps(task)
        def job(cfg: DictConfig) -> Any:
            register_resolvers()  # a launcher may run the job in a fresh process
            try:
                refuse_missing_values(cfg, config_name, sys.modules[task.__module__].__doc__)
                warn_added_top_level_keys(HydraConfig.get().overrides.task)
                return task(cfg)
            except InterpolationResolutionError as err:
                # a resolver's refusal (FACEPARSE_CPU_BF16=2 read by ${auto_precision:}) is
                # bad input like any other: its own message, not OmegaConf's traceback
                cause = resolver_refusal(err)
                if cause is not None and os.environ.get("HYDRA_FULL_ERROR") != "1":
                    report_error(cause)
                raise

        hydra_main = hydra.main(version_base="1.3", config_path=str(CONF_DIR),
                                config_name=config_name)(job)

        @functools.wraps(task)
        def main() -> Any:
            refuse_word_booleans(sys.argv[1:])
            refuse_null_groups(sys.argv[1:])
            refuse_missing_sweeps(sys.argv[1:])
            register_resolvers()  # Hydra resolves some values before the job runs
            refuse_configured_sweeper(sys.argv[1:], config_name, job)
            return hydra_main()

        return main

    return decorate


# what YAML 1.1 read as booleans and Hydra (YAML 1.2) passes on as text: bool("no") is True
WORD_BOOLEANS = frozenset({"yes", "no", "on", "off"})


def refuse_word_booleans(overrides: Sequence[str]) -> None:
    """Refuse ``key=no`` (``off``, ``yes``, ``on``) on any command line in one ``error:``
    line: Hydra hands the option the text, which reads as on wherever a flag is tested
    (``trust_pickle=no`` would unpickle). No faceparse option takes these words as text;
    the commands' own checks name the same mistake, this one catches any option."""
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and not key.startswith("-") and value.strip().lower() in WORD_BOOLEANS:
            report_error(ValueError(f"{override}: use true or false (Hydra reads "
                                    f"{value.strip()} as text, which would count as true)"))


def warn_added_top_level_keys(overrides: Sequence[str]) -> None:
    """``+foo=1`` adds a top-level key no faceparse command reads (``+ckpt=`` for
    ``ckpt_path=``, ``+optimized_metrics=``): kept in the config, said once. Keys under a
    group reach a class, which refuses what it does not take."""
    for override in overrides:
        key, sep, _ = override.partition("=")
        if sep and key.startswith("+") and not key.startswith("++"):
            name = key[1:]
            if "." not in name and "/" not in name and not (CONF_DIR / name).is_dir():
                logging.getLogger(__name__).warning(
                    "%s adds a key no faceparse command reads (a misspelt option?); it is "
                    "only kept in the run's config", override)


def refuse_null_groups(overrides: Sequence[str]) -> None:
    """Refuse ``group=null`` (``logger=null``) in one ``error:`` line naming the group's
    options and the way to leave it out (``~logger``), where Hydra's words are a traceback
    ending in "Config group override must be a string or a list. Got NoneType"."""
    for override in overrides:
        key, sep, value = override.partition("=")
        group = key.lstrip("+")
        if not sep or key.startswith(("-", "~")) or value.strip().lower() != "null":
            continue
        folder = CONF_DIR / group
        if not group.startswith("hydra/") and not folder.is_dir():
            continue
        options = sorted(f.stem for f in folder.glob("*.yaml"))
        if group.startswith("hydra/"):  # Hydra needs each of its groups: no ~ for them
            report_error(ValueError(f"{override}: Hydra's config group {group} takes an option "
                                    f"name; leave the override out for its default"))
        report_error(ValueError(f"{override}: the config group {group} takes one of its "
                                f"options ({', '.join(options)}); to leave it out, write "
                                f"~{group}"))


def command_line_keys() -> list[str] | None:
    """The dotted keys this command's own overrides set (``data=lapa`` stands for all of
    ``data``); None outside Hydra, where nothing tells them from the composed defaults."""
    if not HydraConfig.initialized():
        return None
    return command_keys(HydraConfig.get().overrides.task, CONF_DIR)


def resolver_refusal(err: InterpolationResolutionError) -> Exception | None:
    """The bad-input error a config resolver raised, behind OmegaConf's wrapper (which
    keeps it as the exception's context unless ``OC_CAUSE=1``); None for anything else."""
    seen = err.__cause__ or err.__context__
    while seen is not None:
        if isinstance(seen, (ValueError, KeyError, FileNotFoundError)) and \
                not isinstance(seen, OmegaConfBaseException):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def refuse_missing_values(cfg: DictConfig, config_name: str, doc: str | None) -> None:
    """The options a command needs (``???`` in its config) as one ``error:`` line naming
    them, with the usage line of the command's docstring, not OmegaConf's traceback."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if not missing:
        return
    usage = re.search(r"``(python -m faceparse\.[^`]+)``", doc or "")
    hint = f"; usage: {usage.group(1)}" if usage else ""
    report_error(ValueError(
        f"{', '.join(f'{key}=' for key in missing)} {'is' if len(missing) == 1 else 'are'} "
        f"required (conf/{config_name}.yaml says what each is){hint}"))


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
    """Print ``err`` as one ``error:`` line and exit 1; a run folder this refused command
    created goes too (:func:`~faceparse.training.run_folder.discard_refused_run`)."""
    # a KeyError's str() is its repr; the message is its argument
    message = err.args[0] if isinstance(err, KeyError) and err.args else err
    print(f"error: {message}", file=sys.stderr)
    discard_refused_run()
    raise SystemExit(1) from None


# the config groups whose options select the Optuna sweeper (hparams_search=optuna,
# hydra/sweeper=resumable_optuna or the plugin's own hydra/sweeper=optuna)
SWEEPER_GROUPS = ("hparams_search", "hydra/sweeper")


def refuse_missing_sweeps(overrides: Sequence[str]) -> None:
    """Refuse a command line that asks for the Optuna sweeper without the sweeps extra.

    Hydra would stop later with its own words: ``Could not load 'hydra/sweeper/optuna'``
    without the plugin, ``Error locating target 'optuna.samplers.TPESampler'`` without
    optuna (it builds the sampler before the sweeper, so no sweeper class can say it).
    A config that selects the sweeper itself is :func:`refuse_configured_sweeper`'s.
    ``HYDRA_FULL_ERROR=1`` raises the ImportError instead.
    """
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and _selects_optuna(key.lstrip("+~"), value):
            _refuse_without_sweeps(override)
        if sep and key.lstrip("+~") == "hydra/launcher":
            _refuse_missing_launcher(override, value)


# what each launcher option needs importable: Hydra's plugin and the library it drives
LAUNCHER_MODULES = {"joblib": ("hydra_plugins.hydra_joblib_launcher", "joblib"),
                    "submitit": ("hydra_plugins.hydra_submitit_launcher", "submitit"),
                    "slurm": ("hydra_plugins.hydra_submitit_launcher", "submitit")}


def _refuse_missing_launcher(override: str, option: str) -> None:
    """``hydra/launcher=joblib|slurm|submitit_*`` without the sweeps extra: one line saying
    what to install, not Hydra's "Could not load" or a traceback from a started sweep."""
    needed = next((mods for name, mods in LAUNCHER_MODULES.items() if name in option), ())
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing and os.environ.get("HYDRA_FULL_ERROR") != "1":
        report_error(ImportError(f"{override} needs {' and '.join(missing)}, from the "
                                 f"sweeps extra: pip install 'faceparse[sweeps]'"))


def refuse_configured_sweeper(argv: Sequence[str], config_name: str,
                              task: Callable[..., Any]) -> None:
    """Refuse a command whose config, not its command line, selects the Optuna sweeper
    without the sweeps extra: an experiment file with ``override /hydra/sweeper: ...``,
    a config of ``--config-dir`` or ``hydra.searchpath``.

    Only the composed config knows, so the config is composed as Hydra will compose it
    (its own reading of ``argv``: search path, config name, overrides), and only when the
    extra is missing: with it, there is nothing to refuse and nothing to pay.
    """
    if _sweeps_installed():
        return
    selected = _configured_sweeper(argv, config_name, task)
    if selected:
        _refuse_without_sweeps(f"the Optuna sweeper that the config selects ({selected})")


def _selects_optuna(group: str, option: str) -> bool:
    return group in SWEEPER_GROUPS and "optuna" in option


def _sweeps_installed() -> bool:
    from hydra_plugins.faceparse_sweepers import resumable_optuna

    return resumable_optuna.MISSING is None


def _refuse_without_sweeps(what: str) -> None:
    """One ``error:`` line (exit 1) saying that ``what`` needs the sweeps extra, if missing."""
    from hydra_plugins.faceparse_sweepers.resumable_optuna import require_sweeps_extra

    try:
        require_sweeps_extra(what)
    except ImportError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        report_error(err)


def _configured_sweeper(argv: Sequence[str], config_name: str,
                        task: Callable[..., Any]) -> str | None:
    """``group=option`` of the Optuna sweeper the composed config selects; None when it
    selects none, or when Hydra cannot compose it for another reason (Hydra then says why).

    Without the plugin its configs are missing, so composing stops at the sweeper's: the
    missing config names it. Without optuna alone, the composed choices do.
    """
    command = _hydra_command(argv, config_name, task)
    if command is None:
        return None
    loader, name, overrides = command
    try:
        with warnings.catch_warnings():  # Hydra warns about the config itself, once
            warnings.simplefilter("ignore")
            cfg = loader.load_configuration(config_name=name, overrides=overrides,
                                            run_mode=RunMode.MULTIRUN,
                                            validate_sweep_overrides=False)
    except MissingConfigException as err:
        group, _, option = (err.missing_cfg_file or "").rpartition("/")
        return f"{group}={option}" if _selects_optuna(group, option) else None
    except Exception:  # not ours to report
        return None
    choices = cfg.hydra.runtime.choices
    return next((f"{group}={choices[group]}" for group in SWEEPER_GROUPS
                 if _selects_optuna(group, str(choices.get(group)))), None)


def _hydra_command(argv: Sequence[str], config_name: str, task: Callable[..., Any],
                   ) -> tuple[ConfigLoaderImpl, str, list[str]] | None:
    """What Hydra makes of ``argv``: the config loader (its search path with ``-cp`` and
    ``--config-dir``), the config name (``-cn``) and the overrides; None for a command line
    Hydra itself refuses. Built with the helpers ``hydra.main`` uses (Hydra-internal, so
    the check composes exactly what the command will)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # Hydra prints its own usage error
            args = get_args_parser().parse_args(list(argv))
    except SystemExit:
        return None
    search_path = create_automatic_config_search_path(
        *detect_calling_file_or_module_from_task_function(task),
        args.config_path or str(CONF_DIR))
    if args.config_dir is not None:
        search_path.prepend(provider="command-line",
                            path=f"file://{os.path.abspath(args.config_dir)}",
                            anchor=SearchPathQuery(provider="schema"))
    return (ConfigLoaderImpl(config_search_path=search_path), args.config_name or config_name,
            list(args.overrides))
