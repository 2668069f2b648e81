"""Prepare a dataset once for fast training: ``python -m faceparse.prepare data=celebamask
data.root=/path/to/CelebAMask-HQ [workers=8] [splits=[train,val]]``.

Writes to ``data.dataset.prepared_dir`` (``<root>/prepared_<image_size>`` by default),
which training then reads instead of the raw files. Re-running resumes. Data it cannot
prepare (missing files, a split without images) is refused in one ``error:`` line before
anything is written.
"""

from __future__ import annotations

import logging

from hydra.utils import instantiate
from omegaconf import DictConfig

from faceparse.cli import hydra_entry, keep_run_folder, one_line_errors
from faceparse.data.prepare import SplitReport, prepare_dataset
from faceparse.option_values import whole_number
from faceparse.writable import check_output_dir, output_dir

log = logging.getLogger(__name__)


def prepare(cfg: DictConfig) -> dict[str, SplitReport]:
    """Prepare ``cfg.splits`` of ``cfg.data`` into its ``prepared_dir``; return each report."""
    prepared_dir = cfg.data.dataset.get("prepared_dir")
    if not prepared_dir:
        raise ValueError(f"data.dataset ({cfg.data.dataset._target_}) has no prepared_dir: "
                         f"nothing to prepare")
    whole_number("data.image_size", cfg.data.image_size, 1, "the prepared side in pixels")
    if cfg.workers is not None:
        whole_number("workers", cfg.workers, 0, "the number of worker processes (null: one "
                     "per CPU)")
    check_output_dir(prepared_dir, "data.dataset.prepared_dir")  # read-only data: refused
    datamodule = instantiate(cfg.data)
    # every split opened (listed) first: missing data is refused before there is a run
    opened = {split: datamodule.open_dataset(split, prepared_dir=None) for split in cfg.splits}
    keep_run_folder()  # what fails from here on failed a run: its log stays
    output_dir(prepared_dir, "data.dataset.prepared_dir")
    reports = prepare_dataset(opened.__getitem__, prepared_dir, cfg.data.image_size,
                              cfg.splits, cfg.workers)
    for split, report in reports.items():
        log.info("%s: %d written (%d of them again: their raw files changed), %d already "
                 "done, %d skipped", split, report.written, report.redone, report.reused,
                 report.skipped)
    log.info("prepared copy in %s", prepared_dir)
    return reports


@hydra_entry("prepare")
@one_line_errors(ValueError, KeyError, FileNotFoundError, FileExistsError)
def main(cfg: DictConfig) -> None:
    prepare(cfg)


if __name__ == "__main__":
    main()
