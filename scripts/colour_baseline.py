"""Score a colour-only pixel classifier on the synthetic faces (low is good: shape is needed).

    python scripts/colour_baseline.py --count 200 --val-count 50 --size 96 --seed 0
"""

from __future__ import annotations

import argparse

from faceparse.data.synthetic_baseline import colour_classifier_scores
from faceparse.labels import OURFACE


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="training faces")
    parser.add_argument("--val-count", type=int, default=None, help="default: count // 4")
    parser.add_argument("--size", type=int, default=96, help="render size in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    val_count = args.val_count or max(1, args.count // 4)

    scores = colour_classifier_scores(args.count, val_count, args.size, args.seed)
    rows = zip(OURFACE.class_names, scores["f1"].tolist(), scores["present"].tolist(), strict=True)
    for name, score, seen in rows:
        print(f"{name:>15s}  {score:.3f}" if seen else f"{name:>15s}  (absent)")
    mean = float(scores["f1_mean"])
    print(f"mean F1 over foreground classes present: {mean:.3f}")
    return mean


if __name__ == "__main__":
    main()
