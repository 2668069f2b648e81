"""Users' own data: a folder of images and a folder of single-channel label masks.

Splits come from subfolders when ``data.root/<split>/`` exists (``train/images``,
``train/masks``, ...); otherwise one ``images/`` + ``masks/`` pair is split by a hash of
each file name, so a sample keeps its split when files are added or removed.
The mask's name derives from the image's by ``mask_name`` (``{stem}`` is the image's
name without extension): ``{stem}.png`` by default, ``{stem}_seg.png`` for a
FaceSynthetics copy arranged as ``images/`` + ``segmentations/``.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from pathlib import Path

from faceparse.data.readers.base import Transform
from faceparse.data.readers.files import IMAGE_EXTS, PairedFileDataset
from faceparse.labels import LabelScheme, get_scheme

__all__ = ["ImageMaskFolder", "hash_split"]


def hash_split(name: str, fractions: Mapping[str, float]) -> str:
    """``val``/``test``/``train`` for a file name, stable across runs and machines."""
    u = zlib.crc32(name.encode()) / 2**32
    val, test = fractions.get("val", 0.0), fractions.get("test", 0.0)
    return "val" if u < val else "test" if u < val + test else "train"


class ImageMaskFolder(PairedFileDataset):
    """``images/`` + ``masks/`` folders with a name rule and a native label scheme.

    Args:
        scheme: the label scheme the masks are written in (any of ``faceparse.labels``).
        image_dir, mask_dir: folder names under the root (or under ``root/<split>``).
        mask_name: the mask file name for an image, ``{stem}`` = image name sans extension.
        fractions: held-out shares when there are no split subfolders.
    """

    title = "image/mask folder"

    def __init__(
        self,
        split: str,
        root: str | Path,
        labels: str | LabelScheme = "ourface",
        transform: Transform | None = None,
        scheme: str = "ourface",
        image_dir: str = "images",
        mask_dir: str = "masks",
        mask_name: str = "{stem}.png",
        fractions: Mapping[str, float] | None = None,
        prepared_dir: str | Path | None = None,
        strict: bool = False,
    ) -> None:
        self.native_scheme = get_scheme(scheme)
        self.image_dir, self.mask_dir, self.mask_name = image_dir, mask_dir, mask_name
        self.fractions = dict(fractions or {"val": 0.05, "test": 0.05})
        self.layout = f"""\
  [<split>/]{image_dir}/<name>{{{','.join(IMAGE_EXTS)}}}
  [<split>/]{mask_dir}/{mask_name.format(stem='<name>')}   one channel, {scheme} ids, 255 ignore
with <split> in train, val, test, or no split folders (then {self.fractions} held out
by a hash of the name). Point data.root=<folder> at your data."""
        super().__init__(split, root, labels, transform, prepared_dir, strict)

    def list_raw(self, split: str) -> list[str]:
        by_folder = (self.root / split).is_dir()
        base = self.root / split if by_folder else self.root
        self.require(*(str(base.relative_to(self.root) / d) for d in (self.image_dir,
                                                                       self.mask_dir)))
        images = sorted(p for p in (base / self.image_dir).rglob("*")
                        if p.suffix.lower() in IMAGE_EXTS)
        candidates = []
        for image in images:
            rel = image.relative_to(base / self.image_dir).with_suffix("")
            if by_folder or hash_split(rel.as_posix(), self.fractions) == split:
                mask = base / self.mask_dir / rel.parent / self.mask_name.format(stem=rel.name)
                candidates.append((rel.as_posix(), image, mask))
        return self.pair_up(candidates)
