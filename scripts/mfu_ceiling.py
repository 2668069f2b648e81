"""The MFU ceiling of every profile in stored bench results, against issue 15's targets.

    python scripts/mfu_ceiling.py docs/benchmarks/h100-2026-11-28-census-fixes.json

Reads bench JSON files (``bench.json`` of ``python -m faceparse.bench
"bench.sections=[profile]"``, or the files a lease gathered under docs/benchmarks), finds
each ``profile`` section however deep it sits, and prints a Markdown row per mode: the
whole step, its MFU, the matrix kernels' time, the MFU they cap, and the time the target
leaves for everything else against what everything else took. Profiles recorded before
the ceiling existed get it computed from their kernel classes, the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from faceparse.bench.ceiling import MFU_TARGETS, mfu_ceiling

FLOPS_KEY = {"train": "train_gflops_per_image", "infer": "forward_gflops_per_image"}


def profiles(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every profile section in a bench result, with the JSON path it sits at."""
    if isinstance(node, dict):
        train = node.get("train")  # a census's "train" is a flag, not a profile
        if isinstance(train, dict) and "kernels" in train and "forward_gflops_per_image" in node:
            yield where or ".", node
            return
        for key, value in node.items():
            yield from profiles(value, f"{where}/{key}")


def rows(name: str, profile: dict[str, Any]) -> Iterator[str]:
    for mode in ("train", "infer"):
        part = profile[mode]
        ceiling = mfu_ceiling(part, profile[FLOPS_KEY[mode]] * 1e9, profile["batch_size"],
                              profile.get("peak_bf16_tflops"), MFU_TARGETS[mode])
        mfu, cap = part.get("mfu"), ceiling["ceiling_mfu"]
        budget, rest = ceiling["rest_budget_ms"], ceiling["rest_ms"]
        yield (f"| {name} | {mode} | {part['whole_ms']:.1f} | "
               f"{'-' if mfu is None else f'{mfu:.1%}'} | {ceiling['matrix_ms']:.1f} | "
               f"{'-' if cap is None else f'{cap:.1%}'} | {ceiling['target_mfu']:.0%} | "
               f"{'-' if budget is None else f'{budget:.1f}'} | "
               f"{'-' if rest is None else f'{rest:.1f}'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="bench JSON files")
    args = parser.parse_args()
    lines = ["| profile | mode | whole ms | MFU | matrix kernels ms | MFU ceiling | target | "
             "rest budget ms | rest now ms |", "| --- | --- | --- | --- | --- | --- | --- | "
             "--- | --- |"]
    for path in args.files:
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            sys.exit(f"error: {path}: cannot read it as bench JSON ({error})")
        found = list(profiles(results))
        if not found:
            sys.exit(f"error: {path}: no profile section in it (run the bench with "
                     f"\"bench.sections=[profile]\")")
        for where, profile in found:
            lines += rows(f"{path.name}:{where}", profile)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
