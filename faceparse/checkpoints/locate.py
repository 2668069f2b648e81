"""A ``ckpt=`` argument to a checkpoint file: a file as given, or a training run folder.

Commands that take a trained model (predict, eval, export) accept either, so a user can
point them at ``outputs/train/runs/<date>/<time>`` without digging for the file name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from faceparse.option_values import path_value

__all__ = ["LocatedCheckpoint", "best_checkpoint_pattern", "locate_checkpoint"]

# conf/callbacks/default.yaml: model_checkpoint.filename, and Lightning's own default
DEFAULT_FILENAME = "epoch_{epoch:03d}"
LIGHTNING_FILENAME = "{epoch}-{step}"
# Written beside the best checkpoint, never a best one: Lightning's last (and its
# versions), InterruptCheckpoint's on SIGTERM/Ctrl-C/error, SLURM pre-emption's.
NOT_BEST = re.compile(r"last.*\.ckpt|on_exception\.ckpt|hpc_ckpt_.*\.ckpt")


@dataclass(frozen=True)
class LocatedCheckpoint:
    """The checkpoint file, and the run's resolved config when it came from a run folder."""

    path: Path
    run_dir: Path | None = None

    @property
    def run_config(self) -> Path | None:
        """The run's ``.hydra/config.yaml``, when there is one."""
        if self.run_dir is None:
            return None
        config = self.run_dir / ".hydra" / "config.yaml"
        return config if config.is_file() else None


def locate_checkpoint(ckpt: str | Path) -> LocatedCheckpoint:
    """A checkpoint file as given, or a run folder's best checkpoint.

    In a run folder the best checkpoint is the one file in ``checkpoints/`` named as the
    run's ``callbacks.model_checkpoint.filename`` names them (``epoch_XXX.ckpt``;
    ``save_top_k: 1``); several are ambiguous and refused. ``last*.ckpt`` and
    ``on_exception.ckpt`` never count, so a run with only those (stopped before its
    first validation) is refused rather than scored as if it were the best.
    ``ckpt=null`` is refused by name (Hydra's ``ckpt=123`` is the file ``123``).
    """
    path = path_value("ckpt", ckpt, "a checkpoint file or a training run folder").expanduser()
    if path.is_file():
        return LocatedCheckpoint(path)
    if not path.exists():
        raise FileNotFoundError(f"ckpt={ckpt}: no such file or folder; give a checkpoint file "
                                f"or a training run folder (it holds checkpoints/)")
    folder = path / "checkpoints"
    if not folder.is_dir():
        raise FileNotFoundError(f"ckpt={ckpt} is a folder without checkpoints/: give a "
                                f"checkpoint file or a training run folder")
    located = LocatedCheckpoint(path, path)
    pattern = best_checkpoint_pattern(_checkpoint_filename(located.run_config))
    files = sorted(folder.glob("*.ckpt"))
    best = [p for p in files if pattern.fullmatch(p.name) and not NOT_BEST.fullmatch(p.name)]
    if len(best) == 1:
        return LocatedCheckpoint(best[0], path)
    if not best:
        others = ", ".join(str(p) for p in files)
        hint = (f" (only {others} exist{'s' if len(files) == 1 else ''}: pass "
                f"{'it' if len(files) == 1 else 'one'} as ckpt= to use it)" if files else "")
        raise FileNotFoundError(f"ckpt={ckpt}: no best checkpoint in {folder}{hint}")
    names = ", ".join(p.name for p in best)
    raise ValueError(f"ckpt={ckpt}: {folder} holds several checkpoints ({names}); "
                     f"pass the one you want as ckpt=")


def best_checkpoint_pattern(filename: str) -> re.Pattern[str]:
    """The names Lightning's ModelCheckpoint gives files of a ``filename`` template
    (``epoch_{epoch:03d}`` -> ``epoch_007.ckpt``, ``-v1`` when it versions a name)."""
    fixed = re.split(r"\{[^{}]*\}", filename)
    return re.compile(".+".join(re.escape(part) for part in fixed) + r"(-v\d+)?\.ckpt")


def _checkpoint_filename(run_config: Path | None) -> str:
    """The run's ``callbacks.model_checkpoint.filename``; the project's default without one."""
    if run_config is None:
        return DEFAULT_FILENAME
    try:
        config = OmegaConf.load(run_config)
    except Exception:  # not YAML: the run's .hydra/config.yaml was damaged; use the default
        return DEFAULT_FILENAME
    filename = OmegaConf.select(config, "callbacks.model_checkpoint.filename",
                                default=DEFAULT_FILENAME, throw_on_resolution_failure=False)
    return str(filename) if filename else LIGHTNING_FILENAME
