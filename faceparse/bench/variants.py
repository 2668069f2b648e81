"""Running the bench: the sections a config names, then again once per variant.

A variant is a list of overrides added to the command's; its figures are printed beside
the baseline's as "x baseline" (``compare=fast_path``).
"""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from hydra import compose
from omegaconf import DictConfig, OmegaConf

from faceparse.bench.census import bench_census
from faceparse.bench.deploy import bench_deploy
from faceparse.bench.measure import machine
from faceparse.bench.predict_section import bench_predict
from faceparse.bench.profile import bench_profile
from faceparse.bench.sections import bench_data, bench_infer, bench_train

__all__ = ["SECTIONS", "run", "run_variants"]

log = logging.getLogger(__name__)

SECTIONS: dict[str, Callable[[DictConfig], Any]] = {
    "data": bench_data, "train": bench_train, "infer": bench_infer, "deploy": bench_deploy,
    "predict": bench_predict, "profile": bench_profile, "census": bench_census,
}


def run(cfg: DictConfig, overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the sections ``bench.sections`` names; return their figures with the machine's.

    ``overrides`` are recorded as the command (default: this process's arguments).
    """
    unknown = [s for s in cfg.bench.sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown bench sections {unknown}; choose from {list(SECTIONS)}")
    torch.manual_seed(cfg.seed)
    results: dict[str, Any] = {
        "machine": machine(), "command": " ".join(["python -m faceparse.bench",
                             *(sys.argv[1:] if overrides is None else overrides)]),
        "net": OmegaConf.to_container(cfg.model.net, resolve=True),
    }
    for name in cfg.bench.sections:
        _free_memory()  # what the previous section or variant left must not count
        results[name] = SECTIONS[name](cfg)
    return results


def _free_memory() -> None:
    # compiled code of an earlier variant must not count towards this one's recompile limit
    # (past it, torch.compile falls back to eager without a word); inductor's on-disk cache
    # still serves graphs compiled before, so a warm-up is that of a second run
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _selects_variants(override: str) -> bool:
    """``compare=...``, ``bench.compare...=``, ``~bench.compare.x``: not for the variants."""
    key = _override_key(override)
    return key == "compare" or key.split(".")[:2] == ["bench", "compare"]


def run_variants(
    overrides: Sequence[str],
    variants: Mapping[str, Sequence[str]],
    on_result: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the bench again for each variant: ``overrides`` plus the variant's own.

    A variant's override replaces the command's for the same key, so a variant can narrow
    ``bench.sections`` or switch one option off. A variant that fails is logged and kept
    as ``{"error": ...}`` so the others still run; ``on_result`` sees each as it finishes.
    Needs Hydra initialised (the entry point, or ``initialize_config_dir``).
    """
    results: dict[str, dict[str, Any]] = {}
    for name, extra in variants.items():
        replaced = {_override_key(o) for o in extra}
        kept = [o for o in overrides
                if _override_key(o) not in replaced and not _selects_variants(o)]
        log.info("variant %s: %s", name, " ".join(extra))
        try:
            variant_overrides = [*kept, *extra]
            results[name] = run(compose("bench", overrides=variant_overrides), variant_overrides)
        except Exception as error:  # one broken option must not lose the other figures
            log.exception("variant %s failed", name)
            results[name] = {"error": f"{type(error).__name__}: {error}"}
        if on_result is not None:
            on_result(name, results[name])
    return results
