"""A ``ckpt=`` argument to a checkpoint file: a file as given, or a training run folder.

Commands that take a trained model (predict, eval, export) accept either, so a user can
point them at ``outputs/train/runs/<date>/<time>`` without digging for the file name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["LocatedCheckpoint", "locate_checkpoint"]


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

    In a run folder the best checkpoint is the one file in ``checkpoints/`` other than
    ``last.ckpt`` (``save_top_k: 1``); several are ambiguous and refused, and a run
    with only ``last.ckpt`` (no monitored metric yet) is refused rather than scored as
    if it were the best.
    """
    path = Path(ckpt).expanduser()
    if path.is_file():
        return LocatedCheckpoint(path)
    if not path.exists():
        raise FileNotFoundError(f"ckpt={ckpt}: no such file or folder; give a checkpoint file "
                                f"or a training run folder (it holds checkpoints/)")
    folder = path / "checkpoints"
    if not folder.is_dir():
        raise FileNotFoundError(f"ckpt={ckpt} is a folder without checkpoints/: give a "
                                f"checkpoint file or a training run folder")
    best = sorted(p for p in folder.glob("*.ckpt") if p.name != "last.ckpt")
    if len(best) == 1:
        return LocatedCheckpoint(best[0], path)
    if not best:
        last = folder / "last.ckpt"
        hint = f" (only {last} exists: pass it as ckpt= to use it)" if last.is_file() else ""
        raise FileNotFoundError(f"ckpt={ckpt}: no best checkpoint in {folder}{hint}")
    names = ", ".join(p.name for p in best)
    raise ValueError(f"ckpt={ckpt}: {folder} holds several checkpoints ({names}); "
                     f"pass the one you want as ckpt=")
