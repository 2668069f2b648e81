"""A run's folder: where a job writes, and what it may write over.

``resume=<folder>`` makes that folder the Hydra run folder (the ``run_folder`` resolver in
``conf/hydra/default.yaml``); what a resumed run trains with is
:mod:`faceparse.training.resume_run`'s. Until the command is accepted, nothing is written
into a run's folder: a refused command leaves its ``status.json``, configs and ``.hydra/``
as they were (Hydra's ``.hydra/`` files are the job's to write here, :func:`hydra_subdir`).
A new run (no ``resume=``) refuses a folder that already holds a run
(:func:`refuse_existing_run`): it would write over the run's checkpoints and mix its metrics
into the run's ``csv/metrics.csv``.

A command refused before its real work (:func:`discard_refused_run`) leaves no new run
folder behind: the folder goes only when this command's Hydra run created it
(:class:`NoteNewRunFolder`) and it holds nothing but Hydra's files and the job's own
bookkeeping; a folder that was there before, a resumed run's included, is never removed.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import shutil
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from omegaconf import DictConfig, OmegaConf

from faceparse.training.distributed import is_rank_zero, requeued
from faceparse.training.folder_claim import release_early_claim
from faceparse.training.job_status import (
    INTERRUPTED,
    STATUS_FILE,
    UNREADABLE_STATUS,
    read_status,
)

__all__ = ["AUTO", "CONFIG_FILE", "HYDRA_SUBDIR", "ContinuingCSVLogger", "InterruptCheckpoint",
           "NoteNewRunFolder", "command_keys", "discard_refused_run", "hydra_subdir",
           "keep_run_folder", "refuse_existing_run", "run_evidence", "run_folder",
           "write_hydra_files"]

log = logging.getLogger(__name__)

AUTO = "auto"
CONFIG_FILE = "config_resolved.yaml"
HYDRA_SUBDIR = ".hydra"  # Hydra's output_subdir (conf/hydra/default.yaml)
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")  # what Hydra writes there
# what a job writes into its folder before its real work: its status and its config
BOOKKEEPING = (STATUS_FILE, CONFIG_FILE)
_PACKAGE = re.compile(r"^#\s*@package\s+(\S+)", re.MULTILINE)


def run_folder(resume: str | None, default: str) -> str:
    """Hydra's run folder: the run to resume, or ``default`` for a new run (and ``auto``).

    A file is :func:`resume_config`'s to refuse: raised here, in Hydra's own setup, the
    refusal would print as a traceback rather than the command's one-line error.
    """
    if not isinstance(resume, str) or not resume or resume == AUTO or Path(resume).is_file():
        return default  # resume=true and the like: resume_config refuses them in one line
    return resume


def hydra_subdir(resume: str | None, folder: str | None = None, mode: str | None = None,
                 job: str | None = None) -> str | None:
    """Hydra's ``output_subdir``: :data:`HYDRA_SUBDIR`, or None with ``resume=``, when the
    run ``folder`` already holds a run (:func:`run_evidence`), or for a training ``job`` of
    a multirun (``mode``).

    Hydra writes ``.hydra/`` (config, overrides) into the run folder before the job starts,
    which for ``resume=`` is a run that :func:`resume_config` may yet refuse, and for a new
    run one that :func:`refuse_existing_run` refuses: a refused command would leave its
    overrides there as the run's. A sweep job's folder may be another sweep's job folder
    at that very moment (two workers of one study, two sweeps given one
    ``hydra.sweep.dir``), and no Hydra callback runs before that write, as
    ``on_run_start`` does for a single run. The job writes them instead once it holds the
    folder and the command is accepted (:func:`write_hydra_files`).
    """
    if resume or (folder and run_evidence(Path(folder))):
        return None
    if getattr(mode, "name", mode) == "MULTIRUN" and job == "train":
        return None
    return HYDRA_SUBDIR


def write_hydra_files(task_cfg: DictConfig) -> None:
    """Write the ``.hydra/`` files Hydra left to the job (:func:`hydra_subdir`), as Hydra
    writes them: the command's config, Hydra's, the overrides. Nothing when Hydra wrote them
    itself or was told not to (``hydra.output_subdir=null``, as on DDP's other ranks)."""
    if not HydraConfig.initialized() or not is_rank_zero():
        return
    config = HydraConfig.instance().cfg  # {"hydra": ...}, as Hydra saves it
    hydra = config.hydra
    if not OmegaConf.is_interpolation(hydra, "output_subdir") or hydra.output_subdir:
        return
    folder = Path(hydra.runtime.output_dir) / HYDRA_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    for name, node in (("config.yaml", task_cfg), ("hydra.yaml", config),
                       ("overrides.yaml", hydra.overrides.task)):
        (folder / name).write_text(OmegaConf.to_yaml(node), encoding="utf-8")


@dataclass(frozen=True)
class _NewFolder:
    path: Path  # the run folder Hydra is about to create
    top: Path  # the outermost of its folders that did not exist either


_new_folder: _NewFolder | None = None  # set by NoteNewRunFolder, for this process's run


class NoteNewRunFolder(Callback):
    """Hydra callback (``conf/hydra/default.yaml``): notes, before Hydra creates a single
    run's folder, whether it is new; only a folder this command created may be discarded
    (:func:`discard_refused_run`). A sweep's job folders are never noted."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _new_folder
        folder = Path(os.path.abspath(str(config.hydra.run.dir)))
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        _new_folder = _NewFolder(folder, missing[-1]) if missing else None


def keep_run_folder() -> None:
    """The command starts its real work: its run folder stays, whatever happens next."""
    global _new_folder
    _new_folder = None


def discard_refused_run() -> None:
    """Remove the run folder of a command refused before its real work, so that a typo
    leaves no empty run behind: only when this command created it (:class:`NoteNewRunFolder`,
    not since :func:`keep_run_folder`) and it holds nothing but Hydra's files (``.hydra/``,
    the job's log) and :data:`BOOKKEEPING`; then also the folders created with it, if empty."""
    release_early_claim()  # the claim taken before Hydra wrote the folder goes first
    noted = _new_folder
    if noted is None or not HydraConfig.initialized() or not is_rank_zero():
        return
    hydra = HydraConfig.get()
    folder = Path(hydra.runtime.output_dir)
    logs = _log_files_in(folder)
    if folder != noted.path or not _holds_only(folder, _own_files(hydra, logs)):
        return
    for handler in logs:
        logging.getLogger().removeHandler(handler)  # nothing logs into a removed folder
        handler.close()
    shutil.rmtree(folder, ignore_errors=True)
    for parent in folder.parents:
        if parent != noted.top and noted.top not in parent.parents:
            break
        try:
            parent.rmdir()  # only when empty: another run may have started in it
        except OSError:
            break


def _log_files_in(folder: Path) -> list[logging.FileHandler]:
    """The root logger's log files in ``folder``: the job's log that Hydra opened."""
    return [h for h in logging.getLogger().handlers
            if isinstance(h, logging.FileHandler) and Path(h.baseFilename).parent == folder]


def _own_files(hydra: DictConfig, logs: Sequence[logging.FileHandler]) -> set[str]:
    """What Hydra and the job's bookkeeping put into a run folder (relative paths)."""
    subdirs = {HYDRA_SUBDIR, hydra.output_subdir} - {None}
    return ({f"{d}/{name}" for d in subdirs for name in HYDRA_FILES} | set(BOOKKEEPING)
            | {Path(h.baseFilename).name for h in logs})


def _holds_only(folder: Path, names: Collection[str]) -> bool:
    """Whether every file under ``folder`` is one of ``names``; empty folders hold nothing
    (predict creates its output folder before it loads the model)."""
    return all((p.is_dir() and not p.is_symlink()) or p.relative_to(folder).as_posix() in names
               for p in folder.rglob("*"))


def run_evidence(folder: Path) -> str | None:
    """What shows that ``folder`` already holds a run, or None: checkpoints, a
    ``csv/metrics.csv``, or a ``status.json`` of a run that finished, was interrupted or is
    running (perhaps started at the same time). A failed status alone, with neither
    checkpoints nor metrics, is a command that failed before training wrote anything (a
    refused option, say): its folder may take the corrected command."""
    checkpoints = sorted(p.name for p in (*(folder / "checkpoints").glob("*.ckpt"),
                                          *folder.glob("hpc_ckpt_*.ckpt")))
    if checkpoints:
        return f"checkpoints/{', '.join(checkpoints[:3])}"
    if (folder / "csv" / "metrics.csv").is_file():
        return "csv/metrics.csv"
    status = read_status(folder)
    if status == UNREADABLE_STATUS:
        return f"{STATUS_FILE}, unreadable"
    return (f"{STATUS_FILE}: {status}" if status in ("finished", "running", INTERRUPTED)
            else None)


def refuse_existing_run(folder: Path) -> None:
    """A new run (no ``resume=``) refuses a ``folder`` that already holds a run: it would
    write over the run's checkpoints, config, status and scores, and append its metrics to
    the run's ``csv/metrics.csv``. Nothing in the folder is touched. Checked by the rank that
    writes (the others share its folder); a SLURM job requeued by the launcher starts again
    in its own folder (:func:`~faceparse.training.resume_run.continue_requeued`)."""
    if not is_rank_zero() or requeued():
        return
    evidence = run_evidence(folder)
    if evidence:
        raise ValueError(f"the run folder {folder} already holds a run ({evidence}): continue "
                         f"it with resume={folder}, or start this run in another folder "
                         "(hydra.run.dir=<new folder>, or no hydra.run.dir for a new "
                         "outputs/<task>/<time> folder)")


def command_keys(overrides: Sequence[str], conf_dir: Path) -> list[str]:
    """The dotted config keys a command's Hydra ``overrides`` set (a key stands for its
    subtree): ``data.image_size=64`` sets ``data.image_size``, ``data=lapa`` all of
    ``data``, a ``_global_`` option such as ``experiment=quickstart`` every top-level key
    its file names and every group its defaults override."""
    keys: list[str] = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        name = override.key_or_group
        if (conf_dir / name).is_dir() and not override.is_delete():
            keys += _option_keys(conf_dir, name, override.value(), override.package)
        else:
            keys.append(name)
    return keys


def _option_keys(conf_dir: Path, group: str, option: object, package: str | None) -> list[str]:
    """The keys that choosing ``option`` of config ``group`` sets (see :func:`command_keys`)."""
    options = option if isinstance(option, list) else [option]
    files = [conf_dir / group / f"{o}.yaml" for o in options if o is not None]
    keys: list[str] = []
    for file in files:
        header = _PACKAGE.search(file.read_text()) if file.is_file() else None
        where = package or (header.group(1) if header else "_group_")
        where = where.replace("_group_", group.replace("/", "."))
        if where != "_global_":
            keys.append(where.removeprefix("_global_."))
            continue
        node = OmegaConf.to_container(OmegaConf.load(file))
        assert isinstance(node, dict)
        keys += [str(k) for k in node if k != "defaults"]
        for entry in node.get("defaults", []):
            if isinstance(entry, str) and entry != "_self_":  # another option of the group
                keys += _option_keys(conf_dir, group, entry, None)
            for name in entry if isinstance(entry, dict) else []:  # {override /trainer: cpu}
                keys.append(str(name).removeprefix("override").strip(" /").replace("/", "."))
    return keys


class _AppendingWriter(ExperimentWriter):
    """Keeps an existing ``metrics.csv`` (Lightning's writer deletes it) and its columns."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = sorted(csv.DictReader(file).fieldnames or [])


class ContinuingCSVLogger(CSVLogger):
    """Lightning's CSV logger, continuing the run folder's ``metrics.csv`` when resumed."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class InterruptCheckpoint(L.Callback):
    """Saves ``<dirpath>/on_exception.ckpt`` when fitting stops on SIGTERM, Ctrl-C or an error
    after this fit took at least one optimizer step.

    Before the first step there is nothing to keep: a bad option met while setting up
    (an optimizer refusing its learning rate) would leave a full-size checkpoint of an
    untrained model, which ``resume=auto`` would then pick. Lightning's
    ``OnExceptionCheckpoint`` also turns every ``fit(ckpt_path=None)`` into
    ``ckpt_path="last"``, with two warnings per fresh run; resuming is :func:`resume_config`'s
    job here.
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.path = Path(dirpath) / "on_exception.ckpt"
        self.start_step: int | None = None  # the step this fit started at (after a resume)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_step = trainer.global_step

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        stepped = self.start_step is not None and trainer.global_step > self.start_step
        if trainer.state.fn == "fit" and stepped:
            trainer.save_checkpoint(self.path)
