"""The benchmark: sections (loader, training step, inference), their measurements, variants
side by side, and the tables (``python -m faceparse.bench``).

The names below load on first use, so a light module of the package (``ceiling``, which
``scripts/mfu_ceiling.py`` reads) does not pull in Lightning and the model with it.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["PeakMemory", "count_flops", "machine", "run", "run_variants"]

_HOMES = {"PeakMemory": "measure", "machine": "measure", "count_flops": "sections",
          "run": "variants", "run_variants": "variants"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
