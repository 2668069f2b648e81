"""Microsoft FaceSynthetics (100,000 rendered faces at 512 px, 19 classes), flat layout.

It has no official split. Ours goes by the file number: ``id % 20 == 18`` is
validation, ``id % 20 == 19`` test, the rest training (90 / 5 / 5 %). Going by number
rather than by position keeps every face in the same split in ``dataset_100``,
``dataset_1000`` and ``dataset_100000`` and in a partly unpacked copy.
"""

from __future__ import annotations

from faceparse.data.readers.files import PairedFileDataset
from faceparse.labels import FACESYNTHETICS

__all__ = ["FaceSynthetics", "split_of"]

_SPLIT_OF_REMAINDER = {18: "val", 19: "test"}


def split_of(number: int) -> str:
    """The split a FaceSynthetics face belongs to, from its file number."""
    return _SPLIT_OF_REMAINDER.get(number % 20, "train")


class FaceSynthetics(PairedFileDataset):
    """``data.root/{id:06d}.png`` with ``{id:06d}_seg.png`` (255 = ignore)."""

    native_scheme = FACESYNTHETICS
    title = "FaceSynthetics"
    layout = """\
  000000.png          512x512 RGB render
  000000_seg.png      one channel, ids 0-18, 255 ignore
  000000_ldmks.txt    70 landmarks (not read)
  ... for every face of dataset_100 / dataset_1000 / dataset_100000
Get it from https://github.com/microsoft/FaceSynthetics (dataset_100000.zip) and pass the
unpacked folder as data.root=<folder>."""

    def list_raw(self, split: str) -> list[str]:
        self.require(".")
        return self.pair_up(
            (p.stem, p, p.with_name(f"{p.stem}_seg.png"))
            for p in sorted(self.root.glob("[0-9][0-9][0-9][0-9][0-9][0-9].png"))
            if split_of(int(p.stem)) == split
        )
