"""Photos in: any image a user has, as RGB uint8, and the list of files an ``input=`` names.

Pillow reads the formats people have (JPEG, PNG of any depth, palette, alpha, WebP, TIFF,
BMP, GIF, CMYK) and applies EXIF orientation, so a phone photo is parsed upright; files
Pillow cannot open fall back to OpenCV through the dataset reader. Truncated files are
refused (both libraries would otherwise fill the missing part silently).
"""

from __future__ import annotations

import glob
import os
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from faceparse.data.io import BadSampleError, read_image

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "read_photo", "to_rgb", "list_inputs",
           "output_stems"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp",
                            ".gif", ".ppm", ".pgm", ".jp2"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv"})


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> RGB uint8; 16-bit grey is scaled, not clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(image, dtype=np.uint32 if image.mode == "I" else np.uint16)
        grey = (wide >> 8).clip(0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")  # drop alpha below, without Pillow's palette warning
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def read_photo(path: str | Path) -> np.ndarray:
    """RGB uint8 (H, W, 3), upright by EXIF; the first frame of an animation.

    Raises :class:`BadSampleError` naming the file when it is not a readable image.
    """
    path = Path(path)
    if path.is_dir():
        raise BadSampleError(f"a folder, not an image: {path}")
    if not path.exists():
        raise BadSampleError(f"no such file (broken link?): {path}")
    try:
        with Image.open(path) as image:
            image.load()  # raises on truncated data instead of filling grey
            return _pil_to_rgb(ImageOps.exif_transpose(image))
    except UnidentifiedImageError:
        return read_image(path)  # OpenCV reads a few formats Pillow does not
    except Image.DecompressionBombError as err:
        raise BadSampleError(_over_limit(err, path)) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise BadSampleError(f"not a readable image ({err}): {path}") from err


def _over_limit(err: Image.DecompressionBombError, path: Path) -> str:
    """The size and Pillow's limit in megapixels (its message gives both in pixels)."""
    found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+) pixels", str(err))
    pixels, limit = (map(int, found.groups()) if found else
                     (None, 2 * (Image.MAX_IMAGE_PIXELS or 0)))
    size = f"{pixels / 1e6:.0f} MP" if pixels else "too large"
    return (f"{path}: {size}, over Pillow's decode limit of {limit / 1e6:.0f} MP "
            f"(PIL.Image.MAX_IMAGE_PIXELS; downscale the photo)")


def to_rgb(image: str | Path | Image.Image | np.ndarray | torch.Tensor) -> np.ndarray:
    """What a user hands the predictor -> RGB uint8 (H, W, 3).

    Arrays are HxWx3 RGB (uint8, or float in [0, 1]), HxWx4 RGBA (alpha dropped) or HxW /
    HxWx1 grey; tensors are 3xHxW or 1xHxW in [0, 1] or uint8 (torchvision's convention).
    """
    if isinstance(image, (str, Path)):
        return read_photo(image)
    if isinstance(image, Image.Image):
        return _pil_to_rgb(ImageOps.exif_transpose(image))
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"a tensor image must be (3, H, W) or (1, H, W), got "
                             f"{tuple(image.shape)}")
        image = image.detach().cpu().expand(3, -1, -1).permute(1, 2, 0).numpy()
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"an image array must be (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) / "
                         f"(H, W, 1) grey, got {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"empty image {array.shape[1]}x{array.shape[0]}: nothing to parse")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    array = array[..., :3]
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if np.issubdtype(array.dtype, np.floating):
        if array.min() < 0 or array.max() > 1:
            raise ValueError("a float image must hold values in [0, 1] (or pass uint8 RGB); "
                             "do not normalise it, the predictor does")
        return (array * 255).round().astype(np.uint8)
    raise ValueError(f"unsupported image dtype {array.dtype}: pass uint8 RGB")


def _wanted(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES


def list_inputs(spec: str | Path, output_dir: str | Path | None = None
                ) -> tuple[list[Path], Path]:
    """The files ``input=`` names (a file, a folder searched recursively, or a glob) and
    the root their output names are taken relative to.

    Files under ``output_dir`` are never inputs (a rerun must not parse its own masks).
    Entries that are not regular files (broken links, folders matched by a glob) are kept,
    so the run reports them per file instead of dropping them silently.
    """
    text = str(spec)
    path = Path(text).expanduser()
    out = Path(output_dir).expanduser().resolve() if output_dir is not None else None
    if path.is_file():
        return [path], path.parent
    if path.is_dir():
        root = path
        found = sorted(p for p in path.rglob("*") if _wanted(p) and not p.is_dir())
        found += sorted(p for p in path.rglob("*") if p.is_symlink() and not p.exists())
    elif glob.has_magic(text):
        found = sorted(Path(p) for p in glob.glob(text, recursive=True))
        root = _common_parent(found) if found else path.parent
    else:
        raise FileNotFoundError(f"input={spec}: no such file or folder; give an image, a "
                                f"video, a folder of images or a glob like 'photos/*.jpg'")
    if out is not None:
        found = [p for p in found if not p.resolve().is_relative_to(out)]
    found = list(dict.fromkeys(found))
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
    what its own file is, so adding a file to a folder renames no other input's outputs
    (``a_jpg.png`` beside those two becomes ``a_jpg_png``); names that still clash (``a.JPG``
    and ``a.jpg``) are numbered in the order of their file names.
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
