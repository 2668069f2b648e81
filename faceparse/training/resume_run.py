"""What a resumed run trains with: ``resume=auto`` or ``resume=<run folder>``.

A resumed run reads the folder's ``config_resolved.yaml`` (its own config, not a fresh
composition), continues from the newest training checkpoint the folder holds, and writes
into the same folder, so checkpoints, ``csv/metrics.csv`` and TensorBoard continue where
they stopped. ``resume=auto`` resumes whatever ``hydra.run.dir`` names and starts afresh when
it holds no run to continue yet, which is what a requeued SLURM job needs; a SLURM job the
cluster requeued (a sweep job of the submitit launcher, which reruns the same command) is
resumed that way without being asked (:func:`continue_requeued`).

Only what the resuming command itself sets (:func:`~faceparse.training.run_folder.
command_keys` of its overrides) is checked against the saved config: the keys of
:data:`EXTEND_KEYS` may change, and those of :data:`WEIGHT_KEYS` (where the pretrained files
now are: the checkpoint holds the weights, a moved file must not end the run); any other
change is refused. Keys the command does not set,
and ``paths.*`` (the folders of the machine and working directory the run started from),
come from the saved config.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from faceparse.nested import flatten
from faceparse.training.distributed import is_rank_zero, requeued
from faceparse.training.job_status import read_status
from faceparse.training.run_folder import AUTO, CONFIG_FILE

__all__ = ["EXTEND_KEYS", "RESUME_KEYS", "WEIGHT_KEYS", "continue_requeued", "newest_checkpoint",
           "resume_config"]

log = logging.getLogger(__name__)

# Keys that may differ between the run and the command that resumes it: how it starts, and
# how long it trains (extending a run continues the LR schedule from the rate it reached,
# spreading the rest of its decay over the new end: faceparse.training.schedulers).
RESUME_KEYS = ("resume", "ckpt_path")
EXTEND_KEYS = ("trainer.max_epochs", "trainer.max_steps", "trainer.max_time")
# The pretrained files a run was built from: a resumed run may find them elsewhere (a
# cleaned or moved weights folder, another machine); its checkpoint then fills the net.
WEIGHT_KEYS = ("vit.weights", "cnn.weights")
# Never compared: where the run started (its folders stay the saved ones), and Hydra's own.
UNCHECKED = ("paths", "hydra")


def continue_requeued(cfg: DictConfig) -> DictConfig:
    """``cfg`` with ``resume=auto`` when SLURM requeued this job without ``resume=``.

    The submitit launcher requeues a timed-out or pre-empted sweep job with its first
    command: trained afresh, it would start again at epoch 0 (and a job longer than its
    time limit would never end) while its checkpoints sit in the folder.
    """
    if cfg.get("resume") or not requeued():
        return cfg
    log.info("SLURM requeued this job: resume=auto, continuing its run in %s",
             cfg.paths.output_dir)
    with open_dict(cfg):
        cfg.resume = AUTO
    return cfg


def newest_checkpoint(folder: Path) -> Path | None:
    """The newest training state a run folder holds: ``last.ckpt`` (epoch ends and every N
    steps), ``on_exception.ckpt`` (SIGTERM, Ctrl-C) or Lightning's ``hpc_ckpt_*.ckpt``
    (SLURM pre-emption, SIGUSR1)."""
    candidates = [*(folder / "checkpoints").glob("last*.ckpt"),
                  *(folder / "checkpoints").glob("on_exception.ckpt"),
                  *folder.glob("hpc_ckpt_*.ckpt")]
    return max(candidates, key=lambda p: p.stat().st_mtime_ns, default=None)


def _covered(key: str, prefixes: Collection[str]) -> bool:
    return any(key == p or key.startswith(f"{p}.") for p in prefixes)


def _differences(saved: DictConfig, current: DictConfig, keys: Collection[str] | None,
                 ) -> list[str]:
    """Dotted keys under ``keys`` (None: every key) whose resolved values differ, ignoring
    :data:`RESUME_KEYS`, :data:`EXTEND_KEYS` and :data:`UNCHECKED`."""
    flat_saved = flatten(OmegaConf.to_container(saved, resolve=True))
    flat_current = flatten(OmegaConf.to_container(current, resolve=True))
    ignored = (*RESUME_KEYS, *EXTEND_KEYS, *WEIGHT_KEYS, *UNCHECKED)
    return sorted(k for k in set(flat_saved) | set(flat_current)
                  if (keys is None or _covered(k, keys)) and not _covered(k, ignored)
                  and flat_saved.get(k) != flat_current.get(k))


def resume_config(cfg: DictConfig, keys: Collection[str] | None = None) -> DictConfig:
    """The config a ``resume=`` run trains with: the run's own, with ``ckpt_path`` set to its
    newest checkpoint; ``cfg`` itself when ``resume=auto`` finds no run to continue.

    ``keys`` are what the resuming command sets (:func:`~faceparse.training.run_folder.
    command_keys`; None: every key of ``cfg``): those in :data:`EXTEND_KEYS` are taken from
    ``cfg``, any other that differs from the run is refused (a silently different resumed
    run), as are a file, a folder that is not where this run writes, a folder without a run,
    a moved run folder (its config writes elsewhere), and ``ckpt_path`` (with ``resume=auto``
    it is where a first attempt starts from; a later one continues its own run).
    """
    if not isinstance(cfg.resume, str):
        raise ValueError(f"resume={cfg.resume}: resume takes a run folder (resume=<folder>) "
                         f"or auto (resume=auto hydra.run.dir=<folder>)")
    resume = cfg.resume
    folder = Path(cfg.paths.output_dir)
    if Path(resume).is_file():
        raise ValueError(f"resume={resume} is a file: resume takes a run folder (or auto); "
                         "use ckpt_path=<file> to start from a checkpoint file")
    if cfg.get("ckpt_path") and resume != AUTO:
        raise ValueError("resume= continues a run folder and ckpt_path= starts from a file: "
                         "give one of them")
    if resume != AUTO and Path(resume).resolve() != folder.resolve():
        raise ValueError(f"resume={resume} but this run writes to {folder}: drop "
                         "hydra.run.dir (resume=<folder> picks the folder), or use resume=auto")
    saved_file = folder / CONFIG_FILE
    checkpoint = newest_checkpoint(folder)
    if not saved_file.is_file() or checkpoint is None:
        if resume == AUTO:
            _start_afresh(folder)
            return cfg
        raise FileNotFoundError(f"resume={resume}: a run folder needs {CONFIG_FILE} and a "
                                "checkpoints/last.ckpt; point it at a folder that "
                                "python -m faceparse.train trained in")
    saved = OmegaConf.load(saved_file)
    wrote_to = OmegaConf.select(saved, "paths.output_dir")
    if wrote_to and Path(wrote_to).resolve() != folder.resolve():
        raise ValueError(f"resume={resume}: {saved_file} writes to {wrote_to} (was the folder "
                         "moved?); move it back to resume in place, or start a new run with "
                         f"ckpt_path={checkpoint}")
    changed = _differences(saved, cfg, keys)
    if changed:
        raise ValueError(f"resume={resume}: the command changes the run's config ("
                         f"{', '.join(changed[:8])}); only {', '.join(EXTEND_KEYS)} may "
                         f"change: drop the other overrides (resume=<run> alone uses the "
                         f"run's own config), or start a new run with ckpt_path={checkpoint}")
    # resume=auto makes sure a run is done (a requeued job, a sweep typed again): a
    # finished one is left to do nothing; resume=<folder> asks for more training
    extends = keys is None or any(
        _covered(key, keys) and OmegaConf.select(cfg, key) != OmegaConf.select(saved, key)
        for key in EXTEND_KEYS)
    if resume != AUTO and read_status(folder) == "finished" and not extends:
        length = ", ".join(f"{key}={OmegaConf.select(saved, key)}" for key in EXTEND_KEYS
                           if OmegaConf.select(saved, key) is not None)
        raise ValueError(f"resume={resume}: the run finished at its length ({length}); "
                         "resuming it with that length would train nothing and write over its "
                         "record: give a longer one, or score it with python -m faceparse.eval "
                         f"ckpt={folder}")
    if cfg.get("ckpt_path"):
        log.info("resume=auto: %s holds a run to continue; ckpt_path=%s was where it started",
                 folder, cfg.ckpt_path)
    for key in WEIGHT_KEYS:
        if keys is None or _covered(key, keys):
            saved = _repoint(saved, key, OmegaConf.select(cfg, key))
    with open_dict(saved):
        saved.ckpt_path = str(checkpoint)
        for key in EXTEND_KEYS:
            if (keys is None or _covered(key, keys)) and OmegaConf.select(cfg, key) is not None:
                OmegaConf.update(saved, key, OmegaConf.select(cfg, key), force_add=True)
    log.info("resuming %s from %s", folder, checkpoint.name)
    return saved


def _repoint(saved: DictConfig, key: str, path: str | None) -> DictConfig:
    """``saved`` with the weight file of ``key`` at ``path`` wherever the run's config holds
    the old one: the saved config is resolved, so the model's own copy of ``vit.weights``
    (``model.net.encoder.vit.weights``) is a second value, not a reference."""
    old = OmegaConf.select(saved, key)
    if path is None or old is None or str(path) == str(old):
        return saved

    def moved(node: object) -> object:
        if isinstance(node, dict):
            return {k: moved(v) for k, v in node.items()}
        if isinstance(node, list):
            return [moved(v) for v in node]
        return path if node == old else node

    log.info("resume: %s now at %s (was %s); the run's checkpoint holds the weights", key,
             path, old)
    return OmegaConf.create(moved(OmegaConf.to_container(saved)))


def _start_afresh(folder: Path) -> None:
    """``resume=auto`` with nothing to continue from: a new run there, unless the folder
    holds a run that cannot be resumed (finished, or kept only its best checkpoint), which
    a new run would write over. An attempt stopped before its first checkpoint is started
    again, its ``csv/metrics.csv`` moved aside rather than continued from step 0."""
    kept = sorted(p.name for p in (folder / "checkpoints").glob("*.ckpt"))
    if kept or read_status(folder) == "finished":
        what = f"checkpoints/{kept[0]}" if kept else "a finished run"
        missing = (f"no {CONFIG_FILE}" if newest_checkpoint(folder) is not None
                   else "no last.ckpt or on_exception.ckpt")
        raise ValueError(f"resume=auto: {folder} holds {what} but {missing} to continue "
                         f"from; a new run would write over it. Start one in another folder "
                         f"(ckpt_path=<a checkpoint> starts from its weights)")
    log.info("resume=auto: no checkpoint in %s yet, starting a new run there", folder)
    metrics = folder / "csv" / "metrics.csv"
    if metrics.is_file() and is_rank_zero():
        aside = metrics.with_name(f"metrics.before_{time.strftime('%Y%m%d_%H%M%S')}.csv")
        metrics.rename(aside)
        log.warning("resume=auto: an earlier attempt in %s stopped before its first "
                    "checkpoint; its metrics are kept in %s", folder, aside)

