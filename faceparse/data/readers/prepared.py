"""The prepared form of a dataset: what ``python -m faceparse.prepare`` writes, training reads.

::

    <prepared_dir>/meta.json                 {"dataset", "scheme", "image_size", "version"}
    <prepared_dir>/<split>/images/<id>.jpg   RGB, image_size x image_size, JPEG quality 95
    <prepared_dir>/<split>/labels/<id>.png   one channel, ids of the dataset's native scheme
    <prepared_dir>/<split>/listed.txt        the raw split's ids that prepare considered
    <prepared_dir>/<split>/index.txt         one id per line, written last: the split is done

Labels keep the native scheme (named in ``meta.json``), so one prepared copy serves every
target scheme; images are JPEG because decoding one is several times faster than a PNG.
``listed.txt`` is the index plus the samples skipped as unreadable: a reader compares it
with today's raw listing (:func:`stale_reason`), so samples added or removed since (or a
changed split) are noticed without counting the skipped ones as changes. Copies from before
``listed.txt`` are compared by their index.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from faceparse.data.io import write_atomic

__all__ = ["PreparedLayout", "StalePreparedError", "find_prepared", "stale_reason", "VERSION"]

VERSION = 1
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


def _read_ids(path: Path) -> list[str] | None:
    return path.read_text().split() if path.is_file() else None


def _write_ids(path: Path, ids: list[str]) -> None:
    write_atomic(path, "".join(f"{i}\n" for i in ids).encode())


def find_prepared(prepared_dir: str | Path | None, dataset: str, scheme: str,
                  split: str) -> PreparedLayout | None:
    """The prepared copy of ``dataset`` when its ``split`` is complete, else ``None``."""
    if not prepared_dir:
        return None
    layout = PreparedLayout(Path(prepared_dir))
    meta = layout.read_meta()
    if meta is None or not layout.index_path(split).is_file():
        return None
    if (meta.get("dataset"), meta.get("scheme"), meta.get("version")) != (dataset, scheme,
                                                                          VERSION):
        log.warning("ignoring %s: prepared from %s/%s (version %s), not %s/%s", layout.root,
                    meta.get("dataset"), meta.get("scheme"), meta.get("version"), dataset, scheme)
        return None
    return layout


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
