"""The prepared form of a dataset: what ``python -m faceparse.prepare`` writes, training reads.

::

    <prepared_dir>/meta.json                 {"dataset", "scheme", "image_size", "reader",
                                              "version"}
    <prepared_dir>/<split>/images/<id>.jpg   RGB, image_size x image_size, JPEG quality 95
    <prepared_dir>/<split>/labels/<id>.png   one channel, ids of the dataset's native scheme
    <prepared_dir>/<split>/listed.txt        the raw split's ids that prepare considered
    <prepared_dir>/<split>/sources.json      {id: fingerprint of the raw files it was made from}
    <prepared_dir>/<split>/index.txt         one id per line, written last: the split is done

Labels keep the native scheme (named in ``meta.json``), so one prepared copy serves every
target scheme; images are JPEG because decoding one is several times faster than a PNG.
``listed.txt`` is the index plus the samples skipped as unreadable: a reader compares it
with today's raw listing (:func:`stale_reason`), so samples added or removed since (or a
changed split) are noticed without counting the skipped ones as changes. Copies from before
``listed.txt`` are compared by their index. ``sources.json`` fingerprints each sample's raw
files (names, sizes, modification times, :func:`source_fingerprint`): prepare redoes a
sample whose files differ in any way (a mask edited, a part deleted, an older file unpacked
over it), and a reader reads such a sample from its raw files (copies from before this
record are trusted as they are).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faceparse.data.io import write_atomic

__all__ = ["PreparedLayout", "StalePreparedError", "find_prepared", "refuse_other_size",
           "source_fingerprint", "stale_reason", "json_plain", "VERSION"]

# 2: masks downscaled centre-aligned (INTER_NEAREST_EXACT), as the images are
VERSION = 2
IMAGE_EXT = ".jpg"
LABEL_EXT = ".png"
log = logging.getLogger(__name__)


class StalePreparedError(ValueError):
    """The prepared copy no longer matches the raw files it was made from."""


@dataclass(frozen=True)
class PreparedLayout:
    """Paths of one prepared copy."""

    root: Path

    @property
    def meta_path(self) -> Path:
        return self.root / "meta.json"

    def image_path(self, split: str, sample_id: str) -> Path:
        return self.root / split / "images" / f"{sample_id}{IMAGE_EXT}"

    def label_path(self, split: str, sample_id: str) -> Path:
        return self.root / split / "labels" / f"{sample_id}{LABEL_EXT}"

    def index_path(self, split: str) -> Path:
        return self.root / split / "index.txt"

    def is_done(self, split: str, sample_id: str) -> bool:
        """Both files exist; written atomically, image first, so existence means complete."""
        return self.label_path(split, sample_id).is_file() and self.image_path(
            split, sample_id).is_file()

    def read_meta(self) -> dict | None:
        return json.loads(self.meta_path.read_text()) if self.meta_path.is_file() else None

    def write_meta(self, meta: dict) -> None:
        write_atomic(self.meta_path, json.dumps({**meta, "version": VERSION}, indent=2).encode())

    def listed_path(self, split: str) -> Path:
        return self.root / split / "listed.txt"

    def read_index(self, split: str) -> list[str] | None:
        return _read_ids(self.index_path(split))

    def write_index(self, split: str, ids: list[str]) -> None:
        _write_ids(self.index_path(split), ids)

    def read_listed(self, split: str) -> list[str] | None:
        """The raw ids prepare considered (``None``: a copy from before this record)."""
        return _read_ids(self.listed_path(split))

    def write_listed(self, split: str, ids: list[str]) -> None:
        _write_ids(self.listed_path(split), ids)

    def sources_path(self, split: str) -> Path:
        return self.root / split / "sources.json"

    def read_sources(self, split: str) -> dict[str, str] | None:
        """Each prepared sample's :func:`source_fingerprint` (``None``: a copy from before
        this record, or one whose record cannot be read)."""
        try:
            sources = json.loads(self.sources_path(split).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return sources if isinstance(sources, dict) else None

    def write_sources(self, split: str, sources: Mapping[str, str]) -> None:
        write_atomic(self.sources_path(split), json.dumps(dict(sources)).encode())


def source_fingerprint(paths: Iterable[Path]) -> str:
    """What a sample's raw files are now: their names, sizes and modification times. Any
    change, to an older time too (``unzip`` and ``rsync -a`` restore old ones), or a file
    gone or added, gives another fingerprint; nothing is read."""
    parts = []
    for path in paths:
        try:
            stat = path.stat()
            parts.append(f"{path.name}\t{stat.st_size}\t{stat.st_mtime_ns}")
        except OSError:
            parts.append(f"{path.name}\tmissing")
    return hashlib.sha1("\n".join(sorted(parts)).encode()).hexdigest()[:20]


def _read_ids(path: Path) -> list[str] | None:
    """One id per line; an id may hold spaces (``IMG 0001``), as file names do."""
    if not path.is_file():
        return None
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line]


def _write_ids(path: Path, ids: list[str]) -> None:
    odd = [i for i in ids if "\n" in i or "\r" in i]
    if odd:
        raise ValueError(f"sample ids with a line break cannot be listed in {path}: "
                         f"{odd[:3]!r}; rename those files")
    write_atomic(path, "".join(f"{i}\n" for i in ids).encode("utf-8"))


def find_prepared(prepared_dir: str | Path | None, dataset: str, scheme: str,
                  split: str, reader: Mapping[str, Any] | None = None) -> PreparedLayout | None:
    """The prepared copy of ``dataset`` when its ``split`` is complete, else ``None``.

    ``reader``: the reader options that change what is read (:meth:`reader_settings`); a
    copy made with others is refused, since reading it would train on other files.
    """
    if not prepared_dir:
        return None
    layout = PreparedLayout(Path(prepared_dir))
    meta = layout.read_meta()
    if meta is None or not layout.index_path(split).is_file():
        return None
    if meta.get("dataset") != dataset:
        log.warning("ignoring %s: prepared from %s/%s, not %s/%s", layout.root,
                    meta.get("dataset"), meta.get("scheme"), dataset, scheme)
        return None
    if meta.get("version") != VERSION:
        log.warning("ignoring %s, reading the raw files: it was made by another faceparse "
                    "(copy format %s, this one reads %d; format 2 aligns downscaled masks "
                    "with their images): prepare it again into another "
                    "data.dataset.prepared_dir", layout.root, meta.get("version"), VERSION)
        return None
    if meta.get("scheme") != scheme:
        raise StalePreparedError(other_scheme_message(layout.root, meta.get("scheme"), scheme))
    made_with, today = meta.get("reader"), json_plain(reader or {})
    if made_with is not None and made_with != today:
        raise StalePreparedError(
            f"prepared copy {layout.root} was made with data.dataset settings {made_with}, "
            f"not today's {today}: prepare again into another "
            f"data.dataset.prepared_dir, or read the raw files with "
            f"data.dataset.prepared_dir=null")
    return layout


def other_scheme_message(root: Path, recorded: Any, scheme: str) -> str:
    """Why a copy of the same dataset in another label scheme is refused: it is the record
    of which scheme these masks were declared in, and ids of one scheme fit any other of
    as many classes, so reading the raw masks as ``scheme`` would train on wrong classes."""
    return (f"prepared copy {root} was made with the masks read as label scheme "
            f"{recorded!r}, not data.dataset.scheme={scheme}: set data.dataset.scheme="
            f"{recorded} if that is what the masks hold, or read the raw files with "
            f"data.dataset.prepared_dir=null (prepare again into another "
            f"data.dataset.prepared_dir for a copy in {scheme!r})")


def refuse_other_size(layout: PreparedLayout, image_size: int) -> None:
    """Refuse a copy prepared at another size: its images would be resized a second time
    (upsampled, when it is smaller) instead of read from the originals."""
    made = (layout.read_meta() or {}).get("image_size")
    if made is not None and made != image_size:
        raise StalePreparedError(
            f"prepared copy {layout.root} holds {made} px images, not the {image_size} px "
            f"asked for: prepare it at {image_size} (python -m faceparse.prepare "
            f"data.image_size={image_size}) into another data.dataset.prepared_dir, or read "
            f"the raw files with data.dataset.prepared_dir=null")


def json_plain(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as ``meta.json`` holds them (JSON types), so the two compare equal."""
    return json.loads(json.dumps(dict(settings), default=dict))


def stale_reason(layout: PreparedLayout, split: str, raw_ids: list[str]) -> str | None:
    """Why ``split`` of the prepared copy does not match today's raw listing, or ``None``.

    Only ids are compared (a listing, no decoding), so the check is cheap enough to run
    every time a dataset opens.
    """
    listed = layout.read_listed(split)
    made_from = set(listed if listed is not None else layout.read_index(split) or [])
    raw = set(raw_ids)
    if raw == made_from:
        return None
    added, removed = sorted(raw - made_from), sorted(made_from - raw)
    examples = "; ".join(f"{what} e.g. {', '.join(ids[:3])}" for what, ids in
                         (("added", added), ("removed", removed)) if ids)
    reason = (f"the raw {split} split now has {len(raw)} samples, the copy was made from "
              f"{len(made_from)} ({len(added)} added, {len(removed)} removed since; "
              f"{examples})")
    if listed is None:
        reason += ("; this copy predates the record of what prepare read, so samples it "
                   "skipped as unreadable also count as added")
    return reason
