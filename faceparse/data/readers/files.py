"""Base class for datasets read from disk: the prepared copy when complete, else the raw files.

A subclass describes one distributed layout: the files of a split (``list_raw``), how to
read one sample (``load_raw``) and, for messages, its files (``raw_files``) and its
expected layout plus download source (``layout``). Missing data fails at construction
with one error naming everything that is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from faceparse.data.io import (
    BadSampleError,
    DatasetNotFoundError,
    read_image,
    read_mask,
    recorded_scheme,
    scheme_mismatch,
)
from faceparse.data.orientation import check_exif_choice, read_image_for_mask
from faceparse.data.readers.base import SPLITS, FaceParsingDataset, Transform
from faceparse.data.readers.prepared import (
    PreparedLayout,
    StalePreparedError,
    find_prepared,
    source_fingerprint,
    stale_reason,
)
from faceparse.labels import LabelScheme

__all__ = ["FileDataset", "PairedFileDataset", "IMAGE_EXTS"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
log = logging.getLogger(__name__)


class FileDataset(FaceParsingDataset):
    """Sample ids of one split, read from a prepared copy or the raw layout.

    Args:
        split: ``train``, ``val`` or ``test``.
        root: the unpacked download (``data.root``).
        labels: target label scheme.
        transform: albumentations pipeline (``None``: numpy arrays out).
        prepared_dir: where ``python -m faceparse.prepare`` writes; read when complete.
        strict: raise on a bad sample instead of skipping it.
        exif_orientation: how a photo with an EXIF orientation meets its mask: ``auto``,
            ``apply`` or ``ignore`` (:mod:`faceparse.data.orientation`).
    """

    title: str  # the dataset's name in messages
    layout: str  # expected files under data.root and where to get them

    def __init__(
        self,
        split: str,
        root: str | Path,
        labels: str | LabelScheme = "ourface",
        transform: Transform | None = None,
        prepared_dir: str | Path | None = None,
        strict: bool = False,
        exif_orientation: str = "auto",
    ) -> None:
        super().__init__(labels, transform, strict)
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        self.split = split
        self.root = Path(root)
        self.exif_orientation = check_exif_choice(exif_orientation)
        # ids prepare skipped as unreadable: bad samples of the split, though never read here
        self.prepare_skipped: list[str] = []
        # each prepared sample's source fingerprint; None: not checked (no record, no raw)
        self.prepared_sources: dict[str, str] | None = None
        self._said_changed = False
        self.prepared: PreparedLayout | None = find_prepared(
            prepared_dir, type(self).__name__, self.native_scheme.name, split,
            self.recorded_settings()
        )
        ids = self.prepared_ids(self.prepared) if self.prepared else self.list_raw(split)
        if not ids:
            self.missing([f"any {split} sample"])
        self.ids: list[str] = ids

    def __len__(self) -> int:
        return len(self.ids)

    def prepared_ids(self, prepared: PreparedLayout) -> list[str]:
        """The prepared copy's ids, once its record matches today's raw listing.

        A stale copy is refused rather than read: reading it would silently train on the
        old sample list, falling back to the raw files would silently lose the speed it
        was made for. Without the raw files (only the copy was kept) it is used as is.
        """
        ids = prepared.read_index(self.split) or []
        where = prepared.root / self.split
        checkable = True
        try:
            reason = stale_reason(prepared, self.split, self.list_raw(self.split))
        except DatasetNotFoundError as err:
            log.warning("%s: cannot compare with the raw files (%s); using it as is",
                        where, str(err).splitlines()[0])
            reason, checkable = None, False
        if reason is not None:
            raise StalePreparedError(
                f"prepared copy {where} is out of date with data.root={self.root}: {reason}. "
                f"Re-run `python -m faceparse.prepare` with the same data settings (it "
                f"resumes, keeping the samples already prepared), or read the raw files with "
                f"data.dataset.prepared_dir=null"
            )
        if checkable:  # each sample checked against its files when read (:meth:`load`)
            self.prepared_sources = prepared.read_sources(self.split)
        kept = set(ids)
        self.prepare_skipped = [i for i in prepared.read_listed(self.split) or []
                                if i not in kept]
        log.info("%s %s: reading the prepared copy %s (%d samples)", self.title, self.split,
                 where, len(ids))
        if self.prepare_skipped:
            self.refuse_prepare_skipped(where, checkable)
            log.warning("%s %s: %d samples were skipped by prepare as unreadable, e.g. %s "
                        "(its log named the files)", self.title, self.split,
                        len(self.prepare_skipped), ", ".join(self.prepare_skipped[:3]))
        return ids

    def refuse_prepare_skipped(self, where: Path, checkable: bool) -> None:
        """Under ``strict``, stop on the samples prepare skipped as unreadable, as reading
        the raw files would: the copy lacks them, so no read would ever stop on them."""
        if not self.strict:
            return
        first, more = self.prepare_skipped[0], len(self.prepare_skipped) - 1
        files = " + ".join(map(str, self.raw_files(first))) if checkable else first
        others = f" (and {more} more)" if more else ""
        raise BadSampleError(
            f"{self.title} {self.split}: prepare skipped {files}{others} as unreadable, so "
            f"the prepared copy {where} lacks it (prepare's log said why); "
            f"data.dataset.strict=true stops on bad samples: fix the files and re-run "
            f"python -m faceparse.prepare, or set data.dataset.strict=false")

    def reader_settings(self) -> dict[str, Any]:
        """The options that change which files are read, or how (recorded with a prepared
        copy, which is refused when they change); none for a fixed distributed layout."""
        return {}

    def recorded_settings(self) -> dict[str, Any]:
        """What a prepared copy records of how it was read: :meth:`reader_settings` and a
        photo orientation other than ``auto`` (copies made before that option record none)."""
        settings = self.reader_settings()
        if self.exif_orientation != "auto":
            settings["exif_orientation"] = self.exif_orientation
        return settings

    def list_raw(self, split: str) -> list[str]:
        """Sample ids of ``split`` in the raw layout, in a fixed order."""
        raise NotImplementedError

    def load_raw(self, sample_id: str) -> tuple[np.ndarray, np.ndarray]:
        """RGB image and native mask of one sample from the raw files."""
        raise NotImplementedError

    def raw_files(self, sample_id: str) -> list[Path]:
        """The raw files of one sample (for messages)."""
        raise NotImplementedError

    def source_files(self, sample_id: str) -> list[Path]:
        """The files one sample is read from (prepare redoes it when one is newer than its
        prepared copy); :meth:`raw_files` unless a folder stands for several files."""
        return self.raw_files(sample_id)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        sample_id = self.ids[index]
        if self.prepared is None:
            return self.load_raw(sample_id)
        if self.prepared_sources is not None and self.prepared_sources.get(
                sample_id) != source_fingerprint(self.source_files(sample_id)):
            self._say_changed(sample_id)
            return self.load_raw(sample_id)  # not the copy made from what the files were
        return (read_image(self.prepared.image_path(self.split, sample_id)),
                read_mask(self.prepared.label_path(self.split, sample_id)))

    def _say_changed(self, sample_id: str) -> None:
        """Warn at the first sample whose raw files changed since prepare (once per split
        and process: a worker says it for its own samples)."""
        if self._said_changed:
            return
        self._said_changed = True
        log.warning("%s %s: %s changed since the prepared copy %s was made (its raw files "
                    "differ): read from the raw files, as is every sample that changed; "
                    "re-run python -m faceparse.prepare to refresh the copy", self.title,
                    self.split, " + ".join(map(str, self.raw_files(sample_id))),
                    self.prepared.root if self.prepared else "")

    def describe(self, index: int) -> str:
        sample_id = self.ids[index]
        if self.prepared is None:
            files = self.raw_files(sample_id)
        else:
            files = [self.prepared.image_path(self.split, sample_id),
                     self.prepared.label_path(self.split, sample_id)]
        return " + ".join(map(str, files))

    def missing(self, what: Iterable[str | Path]) -> None:
        """Raise one :class:`DatasetNotFoundError` naming every missing item and the layout."""
        items = "\n".join(f"  - {w}" for w in what)
        raise DatasetNotFoundError(
            f"{self.title} {self.split} split: missing under data.root={self.root}:\n{items}\n"
            f"Expected layout:\n{self.layout}"
        )

    def require(self, *relative: str) -> None:
        """Check that these paths exist under the root, reporting all absent ones at once."""
        absent = [self.root / r for r in relative if not (self.root / r).exists()]
        if absent:
            self.missing(absent)


class PairedFileDataset(FileDataset):
    """Layouts with one image file and one single-channel label PNG per sample.

    Subclasses fill ``self.pairs`` (id -> (image, mask)) in :meth:`list_raw`.
    """

    pairs: dict[str, tuple[Path, Path]]
    left_out: list[str]  # images of the split that are not read, with the reason

    def load_raw(self, sample_id: str) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.pairs[sample_id]
        mask = read_mask(mask_path, self.native_scheme.name)
        return read_image_for_mask(image_path, mask.shape[:2], self.exif_orientation), mask

    def raw_files(self, sample_id: str) -> list[Path]:
        return list(self.pairs[sample_id])

    def pair_up(self, candidates: Iterable[tuple[str, Path, Path]]) -> list[str]:
        """Keep (id, image, mask) candidates whose mask exists.

        Images without a mask (a partly unpacked download) are left out with a warning;
        two images with one id (``a.jpg`` and ``a.png``: one mask name) keep the first,
        with a warning naming both. ``strict`` refuses either instead.
        """
        self.pairs, unpaired, twins = {}, [], []
        self.left_out = []
        for sample_id, image, mask in candidates:
            if sample_id in self.pairs:
                twins.append((self.pairs[sample_id][0], image))
                self.left_out.append(f"{image} (shares its name with {self.pairs[sample_id][0]})")
            elif mask.is_file():
                self.pairs[sample_id] = (image, mask)
            else:
                unpaired.append(mask)
                self.left_out.append(f"{image} (no mask {mask})")
        if unpaired and (self.strict or not self.pairs):
            self.missing(unpaired[:10] + [f"({len(unpaired)} masks in all)"])
        if unpaired:
            log.warning("%s %s: %d images without a mask left out, e.g. %s", self.title,
                        self.split, len(unpaired), unpaired[0])
        if twins:
            named = "; ".join(f"{b} (kept: {a})" for a, b in twins[:10])
            message = (f"{self.title} {self.split}: {len(twins)} images share a name with "
                       f"another image, and so its mask; rename them. Not read: {named}")
            if self.strict:
                raise ValueError(message)
            log.warning(message)
        self.refuse_other_scheme()
        return sorted(self.pairs)

    def refuse_other_scheme(self) -> None:
        """Refuse masks that record another label scheme (``faceparse.predict`` tags its
        masks) at once: every id would be read as another class. One mask is looked at
        here; :func:`read_mask` checks each sample as it is read."""
        if not self.pairs:
            return
        mask = self.pairs[min(self.pairs)][1]
        recorded = recorded_scheme(mask)
        if recorded is not None and recorded != self.native_scheme.name:
            raise ValueError(scheme_mismatch(mask, recorded, self.native_scheme.name))
