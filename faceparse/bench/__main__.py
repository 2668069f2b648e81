"""Benchmark loading, training and inference: ``python -m faceparse.bench [overrides]``.

Composes ``conf/bench.yaml`` (the training config plus a ``bench`` node), so every training
override changes what is measured; ``compare=fast_path`` reruns it once per fast-path
option and prints each figure against the baseline. Prints a table and JSON, and writes
``bench.json`` to the run folder after every run, so a comparison stopped half-way keeps
its figures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from faceparse.bench.report import (
    format_census,
    format_comparison,
    format_profile,
    format_table,
)
from faceparse.bench.variants import run, run_variants
from faceparse.cli import hydra_entry


def bench(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """The bench of ``cfg``, then each variant of ``bench.compare``; written as it goes."""
    path = Path(cfg.paths.output_dir) / "bench.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    results = run(cfg, overrides)

    def save() -> None:
        path.write_text(json.dumps(results, indent=2) + "\n")

    save()
    if cfg.bench.compare:
        results["compare"] = {}

        def keep(name: str, variant: dict[str, Any]) -> None:
            results["compare"][name] = variant
            save()

        variants = OmegaConf.to_container(cfg.bench.compare, resolve=True)
        run_variants(overrides, variants, on_result=keep)
    return results


@hydra_entry("bench")
def main(cfg: DictConfig) -> None:
    results = bench(cfg, list(HydraConfig.get().overrides.task))
    print(json.dumps(results, indent=2))
    print(format_comparison(results) if "compare" in results else format_table(results))
    if "profile" in results:
        print(format_profile(results["profile"]))
    if "census" in results:
        print(format_census(results["census"]))


if __name__ == "__main__":
    main()
