"""The built-in dataset: synthetic faces rendered on the fly, no files needed."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from faceparse.data.readers.base import SPLITS, FaceParsingDataset, Transform
from faceparse.data.synthetic.render import render_face
from faceparse.labels import FACESYNTHETICS, LabelScheme

__all__ = ["SyntheticFaces"]


class SyntheticFaces(FaceParsingDataset):
    """Procedurally drawn portraits, rendered on the fly; no files needed.

    Each split draws from its own seed stream, so train/val/test never share a face,
    and a sample is fully determined by (seed, split, index). ``cache`` keeps rendered
    faces in memory (per loader worker).
    """

    native_scheme = FACESYNTHETICS

    def __init__(
        self,
        split: str,
        labels: str | LabelScheme = "ourface",
        transform: Transform | None = None,
        sizes: Mapping[str, int] | None = None,
        seed: int = 0,
        render_size: int = 128,
        cache: bool = True,
    ) -> None:
        super().__init__(labels, transform)
        sizes = {"train": 2000, "val": 200, "test": 200} if sizes is None else sizes
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        count = sizes.get(split) if isinstance(sizes, Mapping) else None
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"data.dataset.sizes={sizes!r}: give the faces of each split as "
                             f"whole numbers, e.g. data.dataset.sizes={{train: 8, val: 4, "
                             f"test: 4}} ({split} has {count!r})")
        self.length = count
        self.seed = seed * len(SPLITS) + SPLITS.index(split)
        self.render_size = render_size
        # Faces are deterministic, so epochs after the first reuse them (~12 KB each at 64 px).
        self.cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return self.length

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} synthetic faces")
        if self.cache is None:
            return render_face(self.seed, index, self.render_size)
        if index not in self.cache:
            self.cache[index] = render_face(self.seed, index, self.render_size)
        return self.cache[index]
