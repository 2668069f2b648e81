"""Logger setup and teardown around a run: the config every logger gets, the W&B run.

W&B runs offline unless an API key is configured (``WANDB_API_KEY`` or a netrc entry for
the W&B host: ``WANDB_BASE_URL``, else the one ``wandb login [--host]`` saved in wandb's
settings), so a run never prompts for a login and never waits on a missing network;
offline runs are uploaded later with ``wandb sync``. The user's ``WANDB_MODE=offline``
(``dryrun``, ``disabled``) keeps a run offline: it is W&B's own switch, and
``offline=false`` against it is refused rather than one of the two ignored. The W&B run
id is kept in the run folder (``wandb/run_id.txt``), so a run resumed in the same folder
continues the same W&B run, and every job of a sweep (its own folder) gets its own.
"""

from __future__ import annotations

import configparser
import contextlib
import logging
import netrc
import os
import socket
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

__all__ = ["finish_wandb", "has_wandb_api_key", "log_config", "wandb_logger", "wandb_run_id"]

log = logging.getLogger(__name__)

RUN_ID_FILE = Path("wandb") / "run_id.txt"
DEFAULT_HOST = "https://api.wandb.ai"  # where wandb's own settings cannot be read
OFFLINE_MODES = ("offline", "dryrun", "disabled")
# the user's WANDB_MODE ("" for none), kept when an offline logger of ours lets Lightning
# set WANDB_MODE=dryrun: later jobs of a sweep, and DDP ranks started after it, read it here
USER_MODE_KEPT = "FACEPARSE_WANDB_USER_MODE"
# How long an online run waits to reach the W&B host before it falls back to offline.
REACH_TIMEOUT_S = 3.0


def user_wandb_mode() -> str | None:
    """The user's ``WANDB_MODE``, read now (a notebook sets it after importing faceparse);
    the ``dryrun`` Lightning set for an offline logger of ours is not the user's."""
    mode = os.environ.get("WANDB_MODE")
    if mode == "dryrun" and USER_MODE_KEPT in os.environ:
        return os.environ[USER_MODE_KEPT] or None
    return mode


def log_config(loggers: Iterable[Logger], cfg: DictConfig) -> None:
    """Give every logger the whole resolved config once (W&B config, ``hparams.yaml``)."""
    params = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(params)


def _wandb_host() -> str:
    """The W&B server: ``WANDB_BASE_URL``, else the ``base_url`` of wandb's settings file
    (``wandb login --host`` keeps a self-hosted server there), else wandb's default, which
    differs by version. The file is read here, not through ``wandb.setup()``: that fixes
    wandb's settings for the process before Lightning sets an offline run's mode."""
    if url := os.environ.get("WANDB_BASE_URL"):
        return url
    config_dir = Path(os.environ.get("WANDB_CONFIG_DIR") or Path.home() / ".config" / "wandb")
    saved = configparser.ConfigParser()
    with contextlib.suppress(OSError, configparser.Error):
        saved.read(Path(config_dir).expanduser() / "settings")
    if url := saved.get("default", "base_url", fallback=None):
        return url
    try:
        import wandb

        return str(wandb.Settings().base_url)
    except Exception:  # noqa: BLE001 - a probe: any failure leaves the usual host
        return DEFAULT_HOST


def has_wandb_api_key(host: str | None = None) -> bool:
    """Whether W&B can log in without asking: ``WANDB_API_KEY`` or a netrc entry for
    ``host`` (default: :func:`_wandb_host`)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        entries = netrc.netrc(os.environ.get("NETRC")).hosts
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return urlparse(host or _wandb_host()).hostname in entries


def _reachable(url: str, timeout: float = REACH_TIMEOUT_S) -> bool:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def wandb_run_id(run_dir: str | Path) -> str:
    """The W&B run id of a run folder: the one kept there, else a new one, kept.

    A run resumed in the same folder (``resume=auto``, or ``ckpt_path`` with the same
    ``hydra.run.dir``) thereby continues its W&B run instead of starting a new one.
    """
    from wandb.sdk.lib.runid import generate_id

    path = Path(run_dir) / RUN_ID_FILE
    if path.is_file() and (kept := path.read_text().strip()):
        return kept
    run_id = generate_id()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


def wandb_logger(save_dir: str | Path, offline: bool | None = None, id: str | None = None,
                 **kwargs: Any) -> WandbLogger:
    """A Lightning ``WandbLogger`` that never prompts nor hangs (``conf/logger/wandb.yaml``).

    Args:
        save_dir: the run folder; W&B writes ``<save_dir>/wandb/``.
        offline: ``None`` (default): online only with an API key and the host reachable.
        id: the W&B run id; default: the one kept in the run folder (:func:`wandb_run_id`).
        kwargs: ``project``, ``entity``, ``group``, ``tags``, ``name``... for ``wandb.init``.
    """
    import wandb

    if offline not in (None, True, False):
        raise ValueError(f"logger.wandb.offline={offline}: give true, false or null (online "
                         "only with an API key and the W&B host reachable)")
    typed = user_wandb_mode()
    user_mode = (typed or "").strip().lower()
    user_offline = user_mode in OFFLINE_MODES
    if offline is False and user_offline:
        raise ValueError(f"logger.wandb.offline=false, but WANDB_MODE={typed} in the "
                         "environment keeps W&B offline: unset one of the two")
    if user_mode == "disabled":
        offline = True
        kwargs["mode"] = "disabled"  # wandb's no-op run: nothing written, nothing sent
        log.info("W&B is disabled (WANDB_MODE=disabled): this run logs nothing to W&B")
    elif offline is None and user_offline:
        offline = True
        log.info("W&B runs offline (WANDB_MODE=%s); upload it later with "
                 "`wandb sync %s/wandb/offline-run-*`", typed, save_dir)
    host = _wandb_host()
    if offline is None:
        offline = not has_wandb_api_key(host)
        if offline:
            log.info("W&B runs offline (no WANDB_API_KEY, nor a netrc entry for %s); upload "
                     "it later with `wandb sync %s/wandb/offline-run-*`", host, save_dir)
    if not offline and not _reachable(host):
        log.warning("W&B host %s is unreachable: this run logs offline; upload it later "
                    "with `wandb sync %s/wandb/offline-run-*`", host, save_dir)
        offline = True
    if not offline and os.environ.get("WANDB_MODE") != typed:
        # Lightning's "dryrun" from an earlier offline job of this sweep: the user's again
        os.environ.pop("WANDB_MODE", None)
        if typed is not None:
            os.environ["WANDB_MODE"] = typed
        os.environ.pop(USER_MODE_KEPT, None)
    if offline:
        os.environ[USER_MODE_KEPT] = typed or ""  # before Lightning sets its dryrun
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    settings = wandb.Settings(init_timeout=60, console="off", silent=True)
    return WandbLogger(save_dir=str(save_dir), offline=offline, id=id or wandb_run_id(save_dir),
                       settings=settings, **kwargs)


def finish_wandb(failed: bool | None = None) -> None:
    """Close the W&B run of this job, if any, so the next job of a sweep starts its own.

    ``failed`` defaults to whether an exception is being handled (call it in ``finally``).
    """
    wandb = sys.modules.get("wandb")  # a run without W&B never imports it
    if wandb is None or wandb.run is None:
        return
    if failed is None:
        failed = sys.exc_info()[0] is not None
    wandb.finish(exit_code=1 if failed else 0)
