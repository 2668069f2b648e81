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
from omegaconf import DictConfig, ListConfig, OmegaConf

from faceparse.bench.report import (
    format_census,
    format_comparison,
    format_profile,
    format_table,
)
from faceparse.bench.variants import SECTIONS, run, run_variants
from faceparse.cli import hydra_entry, keep_run_folder, one_line_errors
from faceparse.hardware import FORCE_BF16, FORCE_CHANNELS_LAST, env_switch
from faceparse.inference.model import resolve_device
from faceparse.option_values import boolean, shown, whole_number


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


def check_bench_options(cfg: DictConfig) -> None:
    """The bench's own options, and the CPU switches, refused before any measurement: a
    typo costs one line, not minutes of work and a traceback."""
    sections = cfg.bench.sections
    if (not isinstance(sections, ListConfig) or not sections
            or any(not isinstance(s, str) or s not in SECTIONS for s in sections)):
        raise ValueError(f"bench.sections={shown(sections)}: a list of sections, from "
                         f"{', '.join(SECTIONS)}")
    try:
        resolve_device(cfg.bench.device)
    except ValueError as error:
        raise ValueError(f"bench.{error}") from None
    whole_number("bench.warmup", cfg.bench.warmup, 0, "the untimed steps first")
    whole_number("bench.steps", cfg.bench.steps, 1, "the timed steps per measurement")
    if cfg.bench.bf16 is not None:
        boolean("bench.bf16", cfg.bench.bf16)
    for name in (FORCE_BF16, FORCE_CHANNELS_LAST):
        env_switch(name)


@hydra_entry("bench")
@one_line_errors(ValueError, KeyError, FileNotFoundError, ImportError)
def main(cfg: DictConfig) -> None:
    check_bench_options(cfg)
    keep_run_folder()  # what fails from here on failed a bench: its folder stays
    results = bench(cfg, list(HydraConfig.get().overrides.task))
    print(json.dumps(results, indent=2))
    print(format_comparison(results) if "compare" in results else format_table(results))
    if "profile" in results:
        print(format_profile(results["profile"]))
    if "census" in results:
        print(format_census(results["census"]))


if __name__ == "__main__":
    main()
