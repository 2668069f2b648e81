"""The data module ``eval`` and ``stats`` read, built with every bad option a one-line error.

Both commands compose ``data: synthetic`` by default, which reads no files: a
``data.root=`` typed without ``data=<dataset>`` must say what to add, not be a
``TypeError`` from the synthetic dataset. The module's own checks (batch sizes, label
scheme) are reported as the constructor's message, not Hydra's nested block, and before
anything slow (reading a checkpoint, counting a split) starts.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import yaml
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from faceparse.instantiation import instantiate_option
from faceparse.labels import get_scheme
from faceparse.option_values import shown, whole_number

__all__ = ["DATASETS", "load_run_data", "open_data_module", "refuse_root_without_files",
           "worker_count"]

# the data= choices that read files from data.root
DATASETS = "celebamask|lapa|facesynthetics|helen|folder"
# the data keys eval and stats read; a run's saved data config must hold them
REQUIRED_KEYS = ("_target_", "dataset", "labels", "image_size", "batch_size", "num_workers")


def takes_root(target: str) -> bool:
    """Whether the dataset class ``target`` accepts a ``root`` argument."""
    try:
        params = inspect.signature(get_class(target)).parameters.values()
    except Exception:  # noqa: BLE001 - a bad _target_ is instantiate's to report
        return True
    return any(p.name == "root" or p.kind is p.VAR_KEYWORD for p in params)


def refuse_root_without_files(data: DictConfig) -> None:
    """A ``data.root`` given to a dataset that reads no files (the default synthetic one)."""
    target = data.dataset.get("_target_") if "dataset" in data else None
    if data.get("root") is None or not target or takes_root(str(target)):
        return
    raise ValueError(f"data.root={data.root} is set but the dataset is "
                     f"{str(target).rsplit('.', 1)[-1]} (data=synthetic, the default), which "
                     f"reads no files: add data=<{DATASETS}>")


def worker_count(data: DictConfig) -> int:
    """``data.num_workers`` checked: a whole number of loader processes."""
    return whole_number("data.num_workers", data.num_workers, 0,
                        "the number of loader worker processes (0: load in this process)")


def open_data_module(data: DictConfig) -> Any:
    """``data`` instantiated, every bad option one ``ValueError``/``KeyError`` naming it."""
    refuse_root_without_files(data)
    worker_count(data)
    try:
        get_scheme(str(data.labels))
    except KeyError as err:
        raise KeyError(f"data.labels={shown(data.labels)}: "
                       f"{err.args[0] if err.args else err}") from None
    return instantiate_option(data)


def load_run_data(path: Path) -> DictConfig:
    """The ``data`` config of a run's saved ``config_resolved.yaml``; a damaged file (not
    YAML, no data config, keys missing) is one error naming it."""
    try:
        saved = OmegaConf.load(path)
    except (OSError, yaml.YAMLError, OmegaConfBaseException) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} cannot be read as a config ({first}): repair it, or set "
                         f"data=<dataset> (and its options) for the split to score") from None
    data = saved.get("data") if isinstance(saved, DictConfig) else None
    if not isinstance(data, DictConfig):
        raise ValueError(f"{path} has no data config: set data= (and its options) for the "
                         f"split to score")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ValueError(f"{path}: its data config lacks {', '.join(missing)}: repair it, or "
                         f"set data=<dataset> (and its options) for the split to score")
    return saved
