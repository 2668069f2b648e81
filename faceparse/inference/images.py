"""Photos in: any image a user has, as RGB uint8 (the files an ``input=`` names:
:mod:`faceparse.inference.listing`).

Pillow reads the formats people have (JPEG, PNG of any depth, palette, alpha, WebP, TIFF,
BMP, GIF, CMYK) and applies EXIF orientation, so a phone photo is parsed upright; files
Pillow cannot open fall back to OpenCV through the dataset reader. Truncated files are
refused (both libraries would otherwise fill the missing part silently).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from faceparse.data.io import BadSampleError, read_image

__all__ = ["read_photo", "to_rgb"]


# EXIF orientation -> the transpose that makes the photo upright (what viewers show)
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


def _upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation says. Unlike ``ImageOps.exif_transpose``
    this never rewrites the EXIF block, which raises on malformed tags real phones write
    (``TypeError``, ``struct.error``); an unreadable tag leaves the pixels as stored."""
    try:
        orientation = image.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - no readable tag: as stored
        return image
    method = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    return image if method is None else image.transpose(method)


def _pil_to_rgb(image: Image.Image, bits: int | None = None) -> np.ndarray:
    """Any Pillow mode -> RGB uint8; 16-bit grey is scaled, not clipped. 32-bit float or
    integer samples have no agreed white (0-1? 0-65535? the file's range?), so they are
    refused rather than guessed into a black or saturated photo. ``bits``: the file's
    bits per sample (a transposed copy no longer carries the TIFF tags that say it)."""
    if image.mode == "F" or (image.mode == "I" and _beyond_16_bits(image, bits)):
        kind = "floating-point" if image.mode == "F" else "integer"
        raise ValueError(f"32-bit {kind} samples (Pillow mode {image.mode}) have no agreed "
                         f"scale to 8-bit colour; export the photo as 8- or 16-bit")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(image, dtype=np.uint32 if image.mode == "I" else np.uint16)
        grey = (wide >> 8).clip(0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")  # drop alpha below, without Pillow's palette warning
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def _bits_per_sample(image: Image.Image) -> int | None:
    """The widest sample a TIFF declares (tag 258); None for other files."""
    tags = getattr(image, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None
    if bits is None:
        return None
    return max(bits) if isinstance(bits, tuple) and bits else int(bits)


def _beyond_16_bits(image: Image.Image, bits: int | None) -> bool:
    """Mode ``I`` from a file with 32-bit samples, or holding values outside 16 bits."""
    if (bits if bits is not None else _bits_per_sample(image) or 0) > 16:
        return True
    low, high = image.getextrema()
    return low < 0 or high > 65535


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
            return _pil_to_rgb(_upright(image), _bits_per_sample(image))
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
    Paths and PIL images are turned upright by their EXIF orientation tag, which Pillow keeps
    on an image a user rotated: ``ImageOps.exif_transpose`` turns it and drops the tag.
    """
    if isinstance(image, (str, Path)):
        return read_photo(image)
    if isinstance(image, Image.Image):
        return _pil_to_rgb(_upright(image), _bits_per_sample(image))
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
