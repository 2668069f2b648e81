"""The Optuna sweeper, made to resume: ``n_trials`` is the study's total, not a new batch.

The plugin's sweeper reloads a stored study (``load_if_exists``) but then runs ``n_trials``
more trials and numbers the jobs from 0 again, writing over the first run's job folders.
Here finished trials (complete, pruned or failed) count toward ``n_trials``, new jobs are
numbered after every trial already in the study, and the sqlite file's folder is created
before Optuna opens it. A resumed sampler is reseeded: with the config's seed it would
propose the first run's points again. A search-space entry set to an empty string
(``hydra.sweeper.params.fusion=""``) leaves the space: Hydra cannot delete a key of
the sweeper's structured config.

"The same command" is checked: a study records what made it (:func:`command_record`: the
command's overrides and the search space, not ``hydra.*`` such as ``n_trials``) when it is
created, and another command with the same study name is refused in one ``error:`` line
rather than resumed (its trials would join a study of another objective, or, its trials
all done, run nothing).

Optuna and the plugin come with the ``sweeps`` extra. Hydra imports every module under
``hydra_plugins`` when any command starts, so without the extra this module must still
import, and define no sweeper: :func:`require_sweeps_extra` says what to install, and
``faceparse.cli`` refuses a command line that asks for this sweeper before Hydra starts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

INSTALL = "pip install 'faceparse[sweeps]' (from a checkout: pip install -e '.[sweeps]')"

try:
    import optuna
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError as err:  # the sweeps extra is not installed
    MISSING: str | None = str(err)

    class OptunaSweeper:  # type: ignore[no-redef]
        """Stands in for the plugin's class. Not a Hydra ``Plugin``: Hydra's scan registers
        no sweeper from this module (a stray ``Sweeper`` would be offered as one)."""

        def __init__(self, *args: object, **kwargs: object) -> None:
            require_sweeps_extra("the Optuna sweeper")
else:
    MISSING = None


def require_sweeps_extra(what: str) -> None:
    """Raise an ImportError that names the extra to install, if optuna or the plugin is
    missing; ``what`` is what needs them (an override, for a command line)."""
    if MISSING is not None:
        raise ImportError(f"{what} needs the sweeps extra, not installed here ({MISSING}): "
                          f"{INSTALL}")


def _sqlite_path(storage: object) -> Path | None:
    url = str(storage or "")
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


COMMAND_ATTR = "faceparse_command"  # the study's user attribute: what made it


def command_record(arguments: Sequence[str], params: Mapping[str, Any] | None) -> dict:
    """What identifies a search: the command's overrides (order aside) and the search space."""
    return {"overrides": sorted(arguments),
            "search_space": {str(k): str(v) for k, v in sorted((params or {}).items())}}


def command_mismatch(stored: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """How ``current`` differs from the ``stored`` record, or None when they are the same."""
    differences = []
    old, new = set(stored.get("overrides", [])), set(current["overrides"])
    if old - new:  # no +/- signs: they read as Hydra's append and delete overrides
        differences.append(f"its command had {' '.join(sorted(old - new))}")
    if new - old:
        differences.append(f"this one adds {' '.join(sorted(new - old))}")
    old_space, new_space = dict(stored.get("search_space", {})), current["search_space"]
    changed = sorted(k for k in old_space.keys() | new_space.keys()
                     if old_space.get(k) != new_space.get(k))
    if changed:
        differences.append(f"search space: {', '.join(changed)}")
    return "; ".join(differences) or None


def _claim_study(study: Any, record: dict, name: str, storage: str) -> None:
    """Refuse resuming ``study`` for another command (a ValueError); a study made before
    commands were recorded takes this command's record."""
    stored = study.user_attrs.get(COMMAND_ATTR)
    if stored is None:
        study.set_user_attr(COMMAND_ATTR, record)
        return
    mismatch = command_mismatch(json.loads(json.dumps(stored)), record)
    if mismatch:
        raise ValueError(
            f"hydra.sweeper.study_name={name}: the study in {storage} was made by another "
            f"command ({mismatch}); start a new study with hydra.sweeper.study_name=<new "
            "name>, or rerun that study's exact command to resume it")


def _no_trial_completed(impl: Any, error: ValueError) -> bool:
    """Whether ``error`` is Optuna's answer to asking a study without a finished trial for
    its best one (``Record does not exist.``)."""
    if impl.storage and impl.study_name:
        try:
            study = optuna.load_study(study_name=impl.study_name, storage=impl.storage)
        except KeyError:
            return False
        return not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    return "Record does not exist" in str(error)


class ResumableOptunaSweeper(OptunaSweeper):
    """:class:`OptunaSweeper` whose re-run of the same command finishes the same study."""

    def sweep(self, arguments: list[str]) -> None:
        impl = self.sweeper
        if impl.params:
            impl.params = {k: v for k, v in impl.params.items() if v not in (None, "")}
        db = _sqlite_path(impl.storage)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        if impl.storage and impl.study_name:
            record = command_record(arguments, impl.params)
            try:
                study = optuna.load_study(study_name=impl.study_name, storage=impl.storage)
            except KeyError:  # no such study yet: made here, to record the command
                study = None
                optuna.create_study(study_name=impl.study_name, storage=impl.storage,
                                    directions=impl._get_directions()
                                    ).set_user_attr(COMMAND_ATTR, record)
            if study is not None:
                try:
                    _claim_study(study, record, impl.study_name, str(impl.storage))
                except ValueError as err:
                    from faceparse.cli import report_error

                    report_error(err)
                done = [t for t in study.trials if t.state.is_finished()]
                impl.job_idx = len(study.trials)
                impl.n_trials = max(0, impl.n_trials - len(done))
                # a seeded sampler would draw the first run's points again
                impl.sampler.reseed_rng()
                log.info("resuming study %s: %d finished trials, %d to go",
                         impl.study_name, len(done), impl.n_trials)
                if impl.n_trials == 0:
                    return None
        try:
            return super().sweep(arguments)
        except ValueError as err:  # the plugin asks for the best trial whatever happened
            if not _no_trial_completed(impl, err):
                raise
            from faceparse.cli import report_error

            where = getattr(getattr(impl, "config", None), "hydra", None)
            folder = where.sweep.dir if where is not None else "the sweep folder"
            report_error(ValueError(
                f"study {impl.study_name}: no trial finished (every one failed), so there is "
                f"no best value; the status.json of each job under {folder} says why"))
