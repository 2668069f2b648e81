"""What changes when a run spans processes: who writes, which samples each rank scores.

Lightning starts ranks > 0 of a one-machine DDP run by re-running the same command with
``hydra.run.dir`` set to rank 0's folder, and on SLURM every rank is started by ``srun``
with the folder the job script fixed; either way all ranks share one run folder, decided
before any process starts. Only rank 0 writes into it (config, checkpoints, pictures,
scores and loggers are rank-zero already in Lightning and our callbacks). Each evaluation
sample is scored on one rank only: :func:`faceparse.data.loaders.eval_sampler`.
"""

from __future__ import annotations

import logging
import os
import warnings

from lightning.pytorch.utilities import rank_zero_only

__all__ = ["is_rank_zero", "quiet_other_ranks", "requeued"]


def is_rank_zero() -> bool:
    """True in the process that writes the run's files (also in a one-process run).

    Lightning reads the rank from the launcher's environment (``RANK``, ``LOCAL_RANK``,
    ``SLURM_PROCID``) at import, so this holds before the process group exists.
    """
    return rank_zero_only.rank == 0


def requeued() -> bool:
    """A SLURM job the cluster started again (pre-emption, a timeout): its folder holds its
    own earlier attempt, to continue, not another run to refuse."""
    return os.environ.get("SLURM_RESTART_COUNT", "0") not in ("", "0")


def quiet_other_ranks() -> None:
    """One copy of every log line, and no warnings about what is already right.

    Ranks > 0 log warnings and errors only. The epoch scores are computed from the
    confusion matrix torchmetrics has already summed over ranks, so Lightning's advice to
    log them with ``sync_dist=True`` (a mean over identical values) does not apply.
    """
    if not is_rank_zero():
        logging.getLogger().setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\('(val|test)/")
    # Lightning 2.6 calls a torch pytree API that torch deprecated; nothing to act on here.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
