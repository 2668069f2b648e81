"""Users' own data: a folder of images and a folder of single-channel label masks.

Splits come from subfolders when ``data.root/<split>/`` exists (``train/images``,
``train/masks``, ...); otherwise one ``images/`` + ``masks/`` pair is split by a hash of
each file name, so a sample keeps its split when files are added or removed. A small folder
still gets one image in each held-out split (:func:`assign_splits`), and one too small for
that is refused, naming its image count.
The mask's name derives from the image's by ``mask_name`` (``{stem}`` is the image's
name without extension): ``{stem}.png`` by default, ``{stem}_seg.png`` for a
FaceSynthetics copy arranged as ``images/`` + ``segmentations/``.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from faceparse.data.readers.base import Transform
from faceparse.data.readers.files import IMAGE_EXTS, PairedFileDataset
from faceparse.labels import LabelScheme, get_scheme
from faceparse.option_values import is_number, shown

__all__ = ["ImageMaskFolder", "TooFewImagesError", "assign_splits", "hash_split"]


class TooFewImagesError(ValueError):
    """Fewer images than the splits the fractions ask for (one each)."""


def _position(name: str) -> float:
    """Where a file name falls in [0, 1): the hash the split shares are cut from."""
    return zlib.crc32(name.encode()) / 2**32


def check_fractions(fractions: Mapping[str, Any]) -> dict[str, float]:
    """The held-out shares: ``val`` and ``test``, numbers in [0, 1) that leave a train
    share (a typo is one line naming the option, not a comparison error in the split)."""
    unknown = sorted(set(fractions) - {"val", "test"})
    if unknown:
        raise ValueError(f"data.dataset.fractions has {', '.join(map(str, unknown))}: only val "
                         f"and test are held out (train gets the rest)")
    for split, share in fractions.items():
        if not is_number(share) or not 0 <= share < 1:
            raise ValueError(f"data.dataset.fractions.{split}={shown(share)}: the share of "
                             f"images held out for {split}, a number from 0 to below 1")
    if sum(fractions.values()) >= 1:
        raise ValueError(f"data.dataset.fractions={dict(fractions)} holds out everything: "
                         f"val + test must stay below 1, the rest trains")
    return {split: float(share) for split, share in fractions.items()}


def hash_split(name: str, fractions: Mapping[str, float]) -> str:
    """``val``/``test``/``train`` for a file name, stable across runs and machines."""
    u = _position(name)
    val, test = fractions.get("val", 0.0), fractions.get("test", 0.0)
    return "val" if u < val else "test" if u < val + test else "train"


def assign_splits(names: Iterable[str], fractions: Mapping[str, float]) -> dict[str, str]:
    """Each name's split: its :func:`hash_split`, except in a folder too small for the hash
    to reach every share: a held-out split (``val``, ``test``) with a share but no image
    takes one image from the largest split: the one whose hash lies nearest that share. It
    goes back to its hash split once another image hashes into the share (a prepared copy
    then counts as out of date, like any change of split).

    Raises :class:`TooFewImagesError` when there are images, but fewer than the splits
    that need one (train and each held-out split with a share).
    """
    names = sorted(set(names))
    wanted = ["train", *(s for s in ("val", "test") if fractions.get(s, 0.0) > 0)]
    if 0 < len(names) < len(wanted):
        raise TooFewImagesError(f"{len(names)} of them for {len(wanted)} splits")
    splits = {name: hash_split(name, fractions) for name in names}
    for held in wanted[1:]:
        counts = Counter(splits.values())
        if counts[held] or not names:
            continue
        low = fractions.get("val", 0.0) if held == "test" else 0.0
        high = low + fractions[held]
        donor = max(wanted, key=lambda s: (counts[s], s == "train"))
        lent = min((n for n in names if splits[n] == donor),
                   key=lambda n: (max(low - _position(n), _position(n) - high, 0.0), n))
        splits[lent] = held
    return splits


def check_mask_name(mask_name: str) -> str:
    """Refuse a ``mask_name`` rule that names anything but ``{stem}`` (``str.format`` would
    fail on the first image with a bare key)."""
    try:
        mask_name.format(stem="x")
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"data.dataset.mask_name={mask_name!r}: {{stem}} (the image's name "
                         f"without extension) is the only field it may use, e.g. "
                         f"'{{stem}}_seg.png' ({type(err).__name__}: {err})") from None
    return mask_name


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
        exif_orientation: str = "auto",
    ) -> None:
        self.native_scheme = get_scheme(scheme)
        self.image_dir, self.mask_dir, self.mask_name = image_dir, mask_dir, check_mask_name(
            mask_name)
        self.fractions = check_fractions(fractions or {"val": 0.05, "test": 0.05})
        self.layout = f"""\
  [<split>/]{image_dir}/<name>{{{','.join(IMAGE_EXTS)}}}
  [<split>/]{mask_dir}/{mask_name.format(stem='<name>')}   one channel, {scheme} ids, 255 ignore
with <split> in train, val, test, or no split folders (then {self.fractions} held out
by a hash of the name, one image at least). Point data.root=<folder> at your data."""
        super().__init__(split, root, labels, transform, prepared_dir, strict,
                         exif_orientation)

    def reader_settings(self) -> dict[str, Any]:
        """Which files a sample id reads (``fractions`` only moves ids between splits, which
        the prepared copy's listing check sees)."""
        return {"image_dir": self.image_dir, "mask_dir": self.mask_dir,
                "mask_name": self.mask_name}

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
            mask = base / self.mask_dir / rel.parent / self.mask_name.format(stem=rel.name)
            candidates.append((rel.as_posix(), image, mask))
        if not by_folder:
            splits = self.assign_splits([c[0] for c in candidates if c[2].is_file()])
            candidates = [c for c in candidates
                          if splits.get(c[0], hash_split(c[0], self.fractions)) == split]
        return self.pair_up(candidates)

    def assign_splits(self, names: list[str]) -> dict[str, str]:
        """:func:`assign_splits` of the images that have a mask, refusing too few in one line."""
        try:
            return assign_splits(names, self.fractions)
        except TooFewImagesError:
            held = [s for s in ("val", "test") if self.fractions.get(s, 0.0) > 0]
            raise TooFewImagesError(
                f"{self.title} data.root={self.root}: found {len(set(names))} image(s) with a "
                f"mask, too few for one train image and one for each held-out split "
                f"({', '.join(held)}; data.dataset.fractions={self.fractions}): add images "
                f"(at least {len(held) + 1}), or hold fewer out (e.g. "
                f"data.dataset.fractions.test=0, then prepare splits=[train,val] and train "
                f"with test=false)") from None
