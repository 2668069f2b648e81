"""What made a mask, recorded in its PNG text, so a rerun skips only its own outputs.

A rerun into an ``output_dir`` that holds ``<stem>_mask.png`` used to skip the input
whatever made that file: another photo with the same name (``trip1/IMG_0001.jpg`` then
``trip2/IMG_0001.jpg``, ``a.png`` then ``a.jpg``), another checkpoint, another ``labels=``.
Each mask now records (key :data:`RECORD_KEY`, ASCII JSON, so any path fits a ``tEXt``
chunk) the source photo (its path relative to ``input=``, its absolute path, bytes and
modification time), its size in pixels, the checkpoint (path, bytes, modification time:
cheap, unlike hashing a checkpoint of gigabytes) and the settings that change the labels;
the scheme is :data:`~faceparse.data.io.SCHEME_TEXT_KEY`. :func:`judge` compares them with
what this run would write:

- ``skip``: the same photo (same relative path, bytes and time) with the same model,
  scheme and settings;
- ``redo``: this photo's outputs, but made by another model/scheme/settings, or the photo
  changed since (or a mask written before this record, whose scheme or size tells it is
  stale): the caller redoes it with a warning naming what differed;
- ``clash``: another photo that still exists made them (two photos with one output name):
  redoing would overwrite that photo's outputs, so the caller refuses this input.

A mask written before this record is skipped when neither its scheme nor its size tells it
apart (one log line counts these).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from faceparse.data.io import SCHEME_TEXT_KEY, png_size, read_png_text
from faceparse.data.orientation import SWAPS_SIDES

__all__ = ["RECORD_KEY", "Verdict", "file_stamp", "judge", "judge_text", "left_behind",
           "read_record_file", "record_file_text", "run_record", "source_record"]

RECORD_KEY = "faceparse:made_from"
# settings compared only when both runs record them: outputs from before they were recorded
# are not all redone, and alpha counts only where both runs wrote overlays
COMPARED_WHEN_BOTH = frozenset({"precision", "alpha"})


@dataclass(frozen=True)
class Verdict:
    """``action`` is ``skip``, ``redo`` or ``clash``; ``reason`` says why (for a warning);
    ``unrecorded``: the mask predates the record (kept only when nothing told it apart)."""

    action: str
    reason: str = ""
    unrecorded: bool = False


def file_stamp(path: Path) -> dict[str, Any]:
    """A file's absolute path, bytes and modification time: what tells it changed."""
    stat = path.stat()
    return {"path": os.path.abspath(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def run_record(parser: Any) -> dict[str, Any]:
    """What a :class:`~faceparse.inference.predictor.Parser` adds to every record: its
    checkpoint and the settings that change the labels."""
    settings: dict[str, Any] = {"image_size": parser.image_size,
                                "keep_aspect": bool(parser.keep_aspect), "crop": parser.crop}
    if parser.crop != "none":
        settings["margin"] = float(parser.margin)
    if getattr(parser, "precision", None):  # bf16 moves a few labels against fp32
        settings["precision"] = parser.precision
    record = {"model": file_stamp(Path(parser.model.source)), "settings": settings}
    vit_files = getattr(parser.model, "vit_files", ())
    if vit_files:  # the checkpoint holds no ViT weights: the file they came from counts too
        record["vit_weights"] = [file_stamp(path) for path in vit_files]
    return record


def relative_source(photo: Path, root: Path | None) -> str:
    """``photo``'s path relative to ``root`` (default: its folder), POSIX."""
    try:
        relative = Path(os.path.abspath(photo)).relative_to(os.path.abspath(root or
                                                                            photo.parent))
    except ValueError:
        relative = Path(photo.name)
    return relative.as_posix()


def source_record(photo: Path, root: Path | None, size: tuple[int, int] | None,
                  run: dict[str, Any]) -> dict[str, Any]:
    """The record of one photo's outputs: ``run`` (model, settings) plus the photo;
    ``size`` is (width, height), ``None`` when comparing (the photo is not decoded)."""
    record = {"source": relative_source(photo, root), "source_file": file_stamp(photo),
              **run}
    if size is not None:
        record["size"] = list(size)
    return record


def _png_size(mask: Path) -> tuple[int, int] | None:
    with open(mask, "rb") as file:
        return png_size(file.read(24))


def _photo_size(photo: Path) -> tuple[int, int] | None:
    """The photo's upright size from its header (no decoding); ``None`` if unknown."""
    try:
        with Image.open(photo) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - any unreadable header: the size is unknown
        return None
    return (height, width) if orientation in SWAPS_SIDES else (width, height)


def _differences(recorded: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """What the model and settings recorded differ in from this run's."""
    out = []
    old, new = recorded.get("model") or {}, expected["model"]
    if old != new:
        out.append(f"made by checkpoint {old.get('path')} ({old.get('bytes')} bytes), not "
                   f"{new['path']} ({new['bytes']} bytes)" if old.get("path") != new["path"]
                   else f"made by an earlier version of checkpoint {new['path']}")
    old, new = recorded.get("vit_weights") or [], expected.get("vit_weights") or []
    if old != new:
        named = ", ".join(f"{s.get('path')} ({s.get('bytes')} bytes)" for s in old) or "none"
        out.append(f"made with DINOv3 weights {named}, not "
                   f"{', '.join(str(s['path']) for s in new) or 'none'}")
    old, new = recorded.get("settings") or {}, expected["settings"]
    changed = [f"{k}={old.get(k)!r}, not {new.get(k)!r}" for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k)
               and (k not in COMPARED_WHEN_BOTH or (k in old and k in new))]
    if changed:
        out.append("made with " + ", ".join(changed))
    return out


def _same_photo(recorded: dict[str, Any], expected: dict[str, Any]) -> bool:
    """The same relative path, bytes and time: this photo, even in a moved folder."""
    old, new = recorded.get("source_file") or {}, expected["source_file"]
    return (recorded.get("source") == expected["source"] and old.get("bytes") == new["bytes"]
            and old.get("mtime_ns") == new["mtime_ns"])


def _another_photo(recorded: dict[str, Any], photo: Path) -> Path | None:
    """The other photo, still there, that made the outputs; ``None`` if it is this one
    (changed since) or gone."""
    other = Path(str((recorded.get("source_file") or {}).get("path", "")))
    if not other.name or not other.exists():
        return None
    return None if os.path.samefile(other, photo) else other


def _unrecorded(text: dict[str, str], mask: Path, photo: Path, scheme: str) -> Verdict:
    """A mask written before the record: stale only where its scheme or size says so."""
    recorded = text.get(SCHEME_TEXT_KEY)
    if recorded is not None and recorded != scheme:
        return Verdict("redo", f"it records labels {recorded!r}, not {scheme!r}", True)
    mask_size, photo_size = _png_size(mask), _photo_size(photo)
    if mask_size and photo_size and mask_size != photo_size:
        return Verdict("redo", f"it is {mask_size[0]}x{mask_size[1]} px, the photo "
                               f"{photo_size[0]}x{photo_size[1]} px", True)
    return Verdict("skip", unrecorded=True)


def judge(mask: Path, photo: Path, expected: dict[str, Any], scheme: str) -> Verdict:
    """Whether the existing ``mask`` is ``photo``'s under this run (``expected``: its
    :func:`source_record` without a size; ``scheme``: the scheme it would record)."""
    text = read_png_text(mask)
    if text is None:
        return Verdict("redo", "it is not a PNG mask")
    if RECORD_KEY not in text:
        return _unrecorded(text, mask, photo, scheme)
    return judge_text(text, photo, expected, scheme)


def judge_text(text: dict[str, str], photo: Path, expected: dict[str, Any],
               scheme: str) -> Verdict:
    """:func:`judge` on text already read: ``text[RECORD_KEY]`` (JSON) and
    ``text[SCHEME_TEXT_KEY]``, from a mask or a video's record file."""
    try:
        recorded = json.loads(text[RECORD_KEY])
    except ValueError:
        return Verdict("redo", f"its {RECORD_KEY} text is not readable")
    if not isinstance(recorded, dict):
        return Verdict("redo", f"its {RECORD_KEY} text is not readable")
    if not _same_photo(recorded, expected):
        other = _another_photo(recorded, photo)
        if other is not None:
            return Verdict("clash", f"they were made from {other}, another photo with the "
                                    f"same output name")
        return Verdict("redo", f"they were made from {recorded.get('source')!r} as it was "
                               f"then (the photo changed or was replaced since)")
    differs = _differences(recorded, expected)
    if text.get(SCHEME_TEXT_KEY) != scheme:
        differs.insert(0, f"in labels {text.get(SCHEME_TEXT_KEY)!r}, not {scheme!r}")
    return Verdict("redo", "; ".join(differs)) if differs else Verdict("skip")


def record_file_text(record: dict[str, Any], scheme: str,
                     details: dict[str, Any] | None = None) -> str:
    """A video's record file (``<stem>_video.json``): what made its outputs, as a mask's
    text chunks hold it, so it is judged the same way with or without frame masks; beside
    it ``details`` (frames, timing) for the user."""
    return json.dumps({RECORD_KEY: json.dumps(record, sort_keys=True),
                       SCHEME_TEXT_KEY: scheme, **(details or {})}, indent=1) + "\n"


def read_record_file(path: Path) -> dict[str, str] | None:
    """The text of a record file written by :func:`record_file_text`; ``None`` when it is
    not one (unreadable, not JSON, keys missing)."""
    try:
        text = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(text, dict) or not isinstance(text.get(RECORD_KEY), str):
        return None
    return {key: value for key, value in text.items() if isinstance(value, str)}


def left_behind(photo: Path, root: Path | None, stem: Path, out_dir: Path,
                video: bool = False) -> Path | None:
    """The mask ``photo`` got under its plain name (``a_mask.png``; a ``video``: its
    ``a_video.json``) before a same-named file (``a.png`` beside ``a.jpg``) renamed its
    outputs ``stem`` (``a_jpg_*``): still there and recording ``photo`` as its source, it
    is left behind; else ``None``."""
    source = relative_source(photo, root)
    plain = Path(source).with_suffix("")
    if plain == stem:
        return None
    ending = "_video.json" if video else "_mask.png"
    found = out_dir / plain.parent / f"{plain.name}{ending}"
    try:
        if not found.is_file():
            return None
        text = read_record_file(found) if video else read_png_text(found)
        recorded = json.loads(text[RECORD_KEY]) if text and RECORD_KEY in text else {}
    except (OSError, ValueError):
        return None
    return found if isinstance(recorded, dict) and recorded.get("source") == source else None
