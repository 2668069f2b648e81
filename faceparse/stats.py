"""Class frequencies and loss weights of a dataset split:
``python -m faceparse.stats data=celebamask data.root=... [split=train] [max_samples=2000]
[weight_power=0.5]``.

Prints a table of pixel shares per class of the target scheme and a
``'loss.class_weights=[...]'`` override to paste into a training command (quoted for the
shell). Options are checked
before counting (a whole split can take minutes), and a split with nothing to count is
refused rather than printed as all-zero weights, which would train with a 0/0 loss.
"""

from __future__ import annotations

import logging
import shlex

from omegaconf import DictConfig
from rich.console import Console

from faceparse.cli import hydra_entry, one_line_errors
from faceparse.data.stats import (
    count_classes,
    render_table,
    sample_indices,
    training_weights,
    unseen_footnote,
    unseen_note,
    weights_override,
)
from faceparse.evaluation.data_module import open_data_module, worker_count
from faceparse.labels import IGNORE_INDEX
from faceparse.option_values import number, whole_number

log = logging.getLogger(__name__)


def stats_options(cfg: DictConfig) -> tuple[int | None, float]:
    """``max_samples`` (None: all) and ``weight_power``, refused by name if wrong."""
    max_samples = cfg.max_samples
    if max_samples is not None:
        max_samples = whole_number("max_samples", max_samples, 1,
                                   "the number of samples to count (null: all)")
    power = number("weight_power", cfg.weight_power, 0,
                   "the exponent of median-frequency balancing (1: Eigen & Fergus, 0.5: milder)")
    return max_samples, power


def caption(counted: int, total: int, skipped: int, prepare_skipped: int = 0) -> str | None:
    """The table's caption: a subsample, and the bad samples left out of the counts (those
    ``prepare`` skipped too: the prepared copy lacks them, so they are in no count)."""
    parts = [f"{counted} of {total} samples counted"] if counted < total else []
    if skipped:
        parts.append(f"{skipped} bad sample{'s' if skipped > 1 else ''} skipped, not counted")
    if prepare_skipped:
        parts.append(f"{prepare_skipped} bad sample{'s' if prepare_skipped > 1 else ''} "
                     f"skipped by prepare, not in the prepared copy")
    return "; ".join(parts) or None


def stats(cfg: DictConfig) -> tuple[list[float], str]:
    """Count the split's classes, print the table; return the weights and their override."""
    max_samples, power = stats_options(cfg)
    datamodule = open_data_module(cfg.data)
    workers = worker_count(cfg.data)
    dataset = datamodule.open_dataset(cfg.split)
    name = type(dataset).__name__
    if len(dataset) == 0:
        raise ValueError(f"split={cfg.split} of data={name} has no samples: there is nothing "
                         f"to count class weights from; choose another split")
    scheme = datamodule.scheme
    counted = len(sample_indices(len(dataset), max_samples))
    counted_classes = count_classes(dataset, scheme.num_classes, max_samples, workers)
    counts, skipped = counted_classes.counts, counted_classes.skipped
    if not counts.any():
        raise ValueError(f"split={cfg.split} of data={name}: the {counted} samples counted "
                         f"have no labelled pixel (all {IGNORE_INDEX}, ignored), so there "
                         f"are no class frequencies to weight by")
    weights = training_weights(counts, power)
    subsampled = counted < len(dataset)
    console = Console()
    table = render_table(scheme, counts, weights, f"{name} {cfg.split}: {scheme.name} classes")
    table.caption = caption(counted, len(dataset), skipped,
                            len(getattr(dataset, "prepare_skipped", ())))
    if skipped:
        log.warning("%d of the %d samples were bad and not counted (the warnings above name "
                    "them)", skipped, counted)
    console.print(table)
    note = unseen_note(counted, subsampled)
    footnote = unseen_footnote(scheme, counts, weights, note)
    if footnote:
        console.print(footnote, soft_wrap=True, markup=False)
        unseen = [n for n, c in zip(scheme.class_names, counts, strict=True) if not c]
        log.warning("%s %s: weighted %.4g like the rarest counted class, not 0 (training "
                    "would never learn them)%s", ", ".join(unseen), note, weights.max(),
                    f"; max_samples=null counts all {len(dataset)} samples" if subsampled
                    else "")
    override = weights_override(weights)
    # quoted: [...] is a glob to the shell (bash with failglob, zsh refuse it unquoted)
    console.print(shlex.quote(override), soft_wrap=True, markup=False)
    return weights.tolist(), override


@hydra_entry("stats")
@one_line_errors(ValueError, KeyError, FileNotFoundError)
def main(cfg: DictConfig) -> None:
    stats(cfg)


if __name__ == "__main__":
    main()
