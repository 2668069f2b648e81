"""Class frequencies and loss weights of a dataset split:
``python -m faceparse.stats data=celebamask data.root=... [split=train] [max_samples=2000]
[weight_power=0.5]``.

Prints a table of pixel shares per class of the target scheme and a
``loss.class_weights=[...]`` override to paste into a training command.
"""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.console import Console

from faceparse.cli import hydra_entry, one_line_errors
from faceparse.data.stats import class_counts, class_weights, render_table, weights_override


def stats(cfg: DictConfig) -> tuple[list[float], str]:
    """Count the split's classes, print the table; return the weights and their override."""
    datamodule = instantiate(cfg.data)
    dataset = datamodule.open_dataset(cfg.split)
    scheme = datamodule.scheme
    counts = class_counts(dataset, scheme.num_classes, cfg.max_samples, cfg.data.num_workers)
    weights = class_weights(counts, cfg.weight_power)
    console = Console()
    console.print(render_table(scheme, counts, weights,
                               f"{type(dataset).__name__} {cfg.split}: {scheme.name} classes"))
    override = weights_override(weights)
    console.print(override, soft_wrap=True)
    return weights.tolist(), override


@hydra_entry("stats")
@one_line_errors(ValueError, KeyError, FileNotFoundError)
def main(cfg: DictConfig) -> None:
    stats(cfg)


if __name__ == "__main__":
    main()
