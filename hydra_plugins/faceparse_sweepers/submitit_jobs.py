"""Submitit launchers (SLURM, local) whose sweep goes on when one job is killed.

A job that fails inside Python writes its failure down and returns nothing
(:mod:`faceparse.training.job_status`), and the sweep goes on. A job killed from outside
(the cluster's out-of-memory killer, ``scancel``, a node failure, requeues used up) returns
nothing at all: hydra-submitit-launcher asks every job for its result in one list, and
submitit's ``UncompletedJobError`` for the killed one ended the whole sweep, or an Optuna
study, with a traceback, the other jobs' results lost. Here each job is asked on its own:
a killed one is an error line naming it, ``failed`` in its ``status.json`` (which said
``running`` forever), and a job that returned nothing, as a failed job does.

Hydra takes launchers from the ``hydra_plugins`` package only, and imports every module
there when any command starts: without hydra-submitit-launcher (the ``sweeps`` extra) this
module defines no launcher, and ``faceparse.cli`` refuses ``hydra/launcher=slurm`` first.
With it, the plugin's own config names ``hydra/launcher=submitit_local`` and
``submitit_slurm`` are stored again with these launchers as their targets, so a sweep goes
on past a killed job whichever name the user picks (the plugin's options are unchanged).
The plugin scan runs each module again, the plugin's ``config`` module after or before
this one by where each is installed, so the names are stored again only once the scan is
over: when Hydra asks the search-path plugins for their paths, before it composes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

from faceparse.data.io import write_atomic
from faceparse.training.job_status import STATUS_FILE

# faceparse's own config folder (faceparse.cli.CONF_DIR, not imported: it needs torch)
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

__all__ = ["KeepGoingLauncherNames", "LocalLauncher", "SlurmLauncher", "collect_results"]

log = logging.getLogger(__name__)

try:
    from hydra_plugins.hydra_submitit_launcher.config import (
        BaseQueueConf,
        LocalQueueConf,
        SlurmQueueConf,
    )
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
except ImportError:  # the sweeps extra is not installed: no launcher here
    BaseSubmititLauncher = None


def collect_results(jobs: Sequence[Any], job_overrides: Sequence[Sequence[str]],
                    first_index: int, sweep_dir: Path) -> list[JobReturn]:
    """Each job's result; a job that ended without one (submitit's
    ``UncompletedJobError``) is recorded as failed and returns nothing."""
    from submitit.core.utils import UncompletedJobError

    returns = []
    for index, (job, overrides) in enumerate(zip(jobs, job_overrides, strict=True),
                                             first_index):
        try:
            returns.append(job.results()[0])
        except UncompletedJobError as error:
            reason = (str(error).strip().splitlines() or ["no output"])[0]
            folder = sweep_dir / str(index)
            recorded = _record_killed(folder, reason)
            log.error("job %d (%s) ended without a result: killed from outside (out of "
                      "memory, scancel, a node failure or its requeues used up)%s: %s",
                      index, " ".join(filter_overrides(overrides)),
                      f", recorded as failed in {folder / STATUS_FILE}" if recorded else
                      f" (no running status.json in {folder} to mark failed)",
                      reason)
            returns.append(JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED,
                                     _return_value=None))
    return returns


def _record_killed(folder: Path, reason: str) -> bool:
    """Turn the ``running`` status the killed job left in ``folder`` into ``failed``;
    whether there was one (a job killed before it wrote any has nothing to turn)."""
    path = folder / STATUS_FILE
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(status, dict) or status.get("status") != "running":
        return False
    status.update(status="failed", error=f"killed from outside, no result: {reason}")
    write_atomic(path, json.dumps(status, indent=2).encode())
    return True


if BaseSubmititLauncher is not None:

    class _KeepsGoing:
        """hydra-submitit-launcher's launch, each job's result collected on its own (a
        mixin, not itself a launcher Hydra's plugin scan would offer)."""

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
                   ) -> Sequence[JobReturn]:
            import submitit

            assert self.config is not None and job_overrides
            init_keys = {"submitit_folder", "max_num_timeout"}
            executor = submitit.AutoExecutor(
                cluster=self._EXECUTOR, folder=self.params["submitit_folder"],
                **{f"{self._EXECUTOR}_max_num_timeout": self.params[k]
                   for k in ("max_num_timeout",) if k in self.params})
            shared = set(OmegaConf.structured(BaseQueueConf).keys())
            executor.update_parameters(**{
                key if key in shared else f"{self._EXECUTOR}_{key}": value
                for key, value in self.params.items() if key not in init_keys})
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            log.info("Submitit '%s' sweep output dir : %s", self._EXECUTOR, sweep_dir)
            sweep_dir.mkdir(parents=True, exist_ok=True)
            if "mode" in self.config.hydra.sweep:
                sweep_dir.chmod(int(str(self.config.hydra.sweep.mode), 8))
            params = []
            for index, overrides in enumerate(job_overrides, initial_job_idx):
                log.info("\t#%d : %s", index, " ".join(filter_overrides(overrides)))
                params.append((list(overrides), "hydra.sweep.dir", index, f"job_id_for_{index}",
                               Singleton.get_state()))
            jobs = executor.map_array(self, *zip(*params, strict=True))
            return collect_results(jobs, job_overrides, initial_job_idx, sweep_dir)


    class LocalLauncher(_KeepsGoing, BaseSubmititLauncher):
        _EXECUTOR = "local"


    class SlurmLauncher(_KeepsGoing, BaseSubmititLauncher):
        _EXECUTOR = "slurm"


    class KeepGoingLauncherNames(SearchPathPlugin):
        """Store ``submitit_local``/``submitit_slurm`` again with the launchers above as
        targets. A search-path plugin adds no path here: Hydra calls it after the plugin
        scan and before composing, the one moment the plugin's own entries (which the
        scan stores anew) are sure to be there to replace."""

        def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
            if not any(element.path.removeprefix("file://").rstrip("/") == str(CONF_DIR)
                       for element in search_path.get_path()):
                return  # another Hydra app in this environment keeps the plugin's own
            store = ConfigStore.instance()
            for name, node, launcher in (("submitit_local", LocalQueueConf, LocalLauncher),
                                         ("submitit_slurm", SlurmQueueConf, SlurmLauncher)):
                store.store(group="hydra/launcher", name=name, provider="faceparse",
                            node=node(_target_=f"{__name__}.{launcher.__name__}"))
