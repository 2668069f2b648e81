"""Which files an ``input=`` names, and the output name of each.

A folder is searched recursively, through symlinked subfolders too (a linked album is
what a user means to parse), each real folder once, so a link back up the tree cannot
loop. Nothing is dropped without a word: files with suffixes no reader here takes are
counted in one warning, a folder left out is named, and the files left out as this
command's own outputs are counted.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections import Counter, defaultdict
from pathlib import Path

from PIL import features

log = logging.getLogger(__name__)

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "OUTPUT_ENDINGS", "list_inputs",
           "output_stems", "is_output_name"]

# every suffix Pillow (or, for .jp2, OpenCV) decodes here; .avif where Pillow has AVIF
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".tif", ".tiff",
                            ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".pnm", ".jp2"}
                           | ({".avif"} if features.check("avif") else set()))
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".avi", ".mov", ".mkv", ".webm"})
# what faceparse.predict writes per input (faceparse.inference.outputs, .video)
OUTPUT_ENDINGS = ("_mask.png", "_color.png", "_overlay.png", "_visualization.png",
                  "_probs.npz", "_mask.mp4", "_overlay.mp4")
_FRAME_MASK = re.compile(r"\d+_mask\.png")
# a video's hidden partial files (faceparse.inference.video_outputs)
_PARTIAL_ENDINGS = ("_mask.partial.mp4", "_overlay.partial.mp4", "_mask.sound.mp4",
                    "_overlay.sound.mp4")
_EXAMPLES = 3  # files named in a warning about many


def is_output_name(path: Path) -> bool:
    """Whether ``path`` is named as one of this command's outputs (a frame mask too, and a
    hidden partial video a killed run left)."""
    name = path.name
    return name.endswith(OUTPUT_ENDINGS) or (
        path.parent.name.endswith("_frames") and _FRAME_MASK.fullmatch(name) is not None) or (
        name.startswith(".") and name.endswith(_PARTIAL_ENDINGS))


def _wanted(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES


def _examples(paths: list[Path]) -> str:
    more = ", ..." if len(paths) > _EXAMPLES else ""
    return ", ".join(str(p) for p in paths[:_EXAMPLES]) + more


def _walk(folder: Path) -> tuple[list[Path], list[Path]]:
    """Every file under ``folder`` (symlinked subfolders followed, each real folder once)
    and the files whose suffix no reader takes (hidden ones such as ``.DS_Store`` aside).
    Broken links are kept as inputs, so the run reports them instead of dropping them."""
    found, other = [], []
    seen = {os.path.realpath(folder)}
    for top, dirs, files in os.walk(folder, followlinks=True):
        for name in sorted(dirs):  # pruned in place: os.walk then does not descend
            real = os.path.realpath(os.path.join(top, name))
            if real in seen:
                log.warning("not searched: %s (a link to %s, which is searched already)",
                            os.path.join(top, name), real)
                dirs.remove(name)
            else:
                seen.add(real)
        for name in files:
            path = Path(top) / name
            if _wanted(path) or (path.is_symlink() and not path.exists()):
                found.append(path)
            elif not name.startswith("."):
                other.append(path)
    return sorted(found), sorted(other)


def _under(path: Path, folder: Path) -> bool:
    """``path`` (as written, or its target) lies in ``folder`` (a resolved path)."""
    return (Path(os.path.abspath(path)).is_relative_to(folder)
            or path.resolve().is_relative_to(folder))


def _without_outputs(found: list[Path], root: Path, out: Path) -> tuple[list[Path], str]:
    """``found`` less this command's own outputs, and how they were told apart.

    With ``output_dir`` strictly inside the input folder, everything under it is an
    output. With ``output_dir`` the input folder itself or above it, the photos lie under
    it too: only files under it named as outputs (``*_mask.png``, ...) are left out.
    """
    root = root.resolve()
    if out != root and out.is_relative_to(root):
        rule = f"under output_dir={out}"
        kept = [p for p in found if not _under(p, out)]
    elif root.is_relative_to(out):
        rule = f"named like this command's outputs (*{', *'.join(OUTPUT_ENDINGS)})"
        kept = [p for p in found if not (_under(p, out) and is_output_name(p))]
    else:
        return found, ""
    kept_set = set(kept)
    left = [p for p in found if p not in kept_set]
    if left and kept:
        log.info("left out %d files as this command's outputs (%s), e.g. %s", len(left), rule,
                 _examples(left))
    return kept, rule if left else ""


def list_inputs(spec: str | Path, output_dir: str | Path | None = None
                ) -> tuple[list[Path], Path]:
    """The files ``input=`` names (a file, a folder searched recursively, or a glob) and
    the root their output names are taken relative to.

    This command's own outputs are never inputs (a rerun must not parse its masks; see
    :func:`_without_outputs`). Entries that are not regular files (broken links, folders
    matched by a glob) are kept, so the run reports them per file instead of dropping them
    silently; files of a folder with other suffixes are one warning.
    """
    text = str(spec)
    path = Path(text).expanduser()
    out = Path(output_dir).expanduser().resolve() if output_dir is not None else None
    if path.is_file():
        return [path], path.parent
    if path.is_dir():
        root = path
        found, other = _walk(path)
        other = [p for p in other if not is_output_name(p) and not (out and _under(p, out))]
        if other:
            log.warning("%d files with other suffixes not read (no reader here takes them), "
                        "e.g. %s", len(other), _examples(other))
    elif glob.has_magic(text):
        found = sorted(Path(p) for p in glob.glob(text, recursive=True))
        root = _common_parent(found) if found else path.parent
    else:
        raise FileNotFoundError(f"input={spec}: no such file or folder; give an image, a "
                                f"video, a folder of images or a glob like 'photos/*.jpg'")
    found = list(dict.fromkeys(found))
    rule = ""
    if out is not None and found:
        total = len(found)
        found, rule = _without_outputs(found, root, out)
        if not found:
            raise FileNotFoundError(f"input={spec}: all {total} files there are left out as "
                                    f"this command's own outputs ({rule}); nothing else to "
                                    f"parse")
    if not found:
        raise FileNotFoundError(f"input={spec}: no images or videos there (looked for "
                                f"{', '.join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))})")
    return found, root


def _common_parent(paths: list[Path]) -> Path:
    return Path(os.path.commonpath([os.path.abspath(p.parent) for p in paths]))


def output_stems(paths: list[Path], root: Path) -> list[Path]:
    """Output name (without suffix) per input, relative to ``root``, all distinct.

    ``a.jpg`` and ``a.png`` in one folder become ``a_jpg`` and ``a_png``; the same name in
    two subfolders keeps the subfolders. A name is changed only where it clashes, and by
    what its own file is (``a_jpg.png`` beside those two becomes ``a_jpg_png``); names
    that still clash (``a.JPG`` and ``a.jpg``) are numbered in the order of their file
    names. Adding ``a.png`` beside a parsed ``a.jpg`` thus renames ``a.jpg``'s outputs;
    the old ``a_mask.png`` records ``a.jpg`` as its source, so it is never taken as
    ``a.png``'s.
    """
    root = Path(os.path.abspath(root))
    relative = []
    for p in paths:
        try:
            relative.append(Path(os.path.abspath(p)).parent.relative_to(root) / p.stem)
        except ValueError:
            relative.append(Path(p.stem))
    names = list(relative)
    tagged = [False] * len(paths)
    while True:  # each round tags untagged clashing names with their suffix
        counts = Counter(names)
        clashing = [i for i, name in enumerate(names) if counts[name] > 1 and not tagged[i]]
        if not clashing:
            break
        for i in clashing:
            suffix = paths[i].suffix.lstrip(".").lower()
            names[i] = relative[i].with_name(f"{relative[i].name}_{suffix}")
            tagged[i] = True
    counts = Counter(names)
    clashes: dict[Path, list[int]] = defaultdict(list)
    for i, name in enumerate(names):
        if counts[name] > 1:
            clashes[name].append(i)
    for name, members in clashes.items():
        for number, i in enumerate(sorted(members, key=lambda i: str(paths[i]))):
            names[i] = name.with_name(f"{name.name}_{number}")
    if len(set(names)) != len(names):  # a number met a real name: number every input
        names = [name.with_name(f"{name.name}_{i}") for i, name in enumerate(names)]
    return names
