"""Robust image and mask file I/O shared by every dataset reader and the prepare step.

Real downloads contain truncated JPEGs (OpenCV decodes those into grey-filled images
with only a console warning), grayscale, RGBA and 16-bit files. Readers here either
convert such inputs to what training expects or raise :class:`BadSampleError` naming the
file, so a dataset can skip the sample (or stop, in strict mode) instead of training on
garbage. Writes are atomic: a temporary name, then ``os.replace``.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "BadSampleError",
    "DatasetNotFoundError",
    "read_image",
    "read_mask",
    "read_part_mask",
    "encode_image",
    "write_atomic",
]


class BadSampleError(ValueError):
    """One sample cannot be used (corrupt file, wrong size, unknown labels)."""


class DatasetNotFoundError(FileNotFoundError):
    """The dataset root or its split files are missing; the message says what to get."""


def _decode(path: Path, flags: int) -> np.ndarray:
    """Decode a file after checking that it is complete, or raise :class:`BadSampleError`."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise BadSampleError(f"cannot read {path}: {err.strerror or err}") from err
    if data[:2] == b"\xff\xd8" and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        # Entropy-coded data never contains FF D9, so a complete JPEG ends its last scan
        # with an end-of-image marker; without it OpenCV silently fills the rest with grey.
        raise BadSampleError(f"truncated JPEG (no end-of-image marker after the last scan): {path}")
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data.rfind(b"IEND") < data.rfind(b"IDAT"):
        raise BadSampleError(f"truncated PNG (no IEND chunk): {path}")
    array = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None
    if array is None or array.size == 0:
        raise BadSampleError(f"not a decodable image: {path}")
    return array


def _to_uint8(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array >> 8).astype(np.uint8)
    raise BadSampleError(f"unsupported pixel type {array.dtype} in {path}")


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 (H, W, 3): grayscale is replicated, alpha dropped, 16 bit scaled to 8.

    ``IMREAD_ANYCOLOR | IMREAD_ANYDEPTH`` (not ``UNCHANGED``) keeps EXIF orientation.
    """
    path = Path(path)
    image = _to_uint8(_decode(path, cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH), path)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    code = {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}.get(image.shape[2])
    if code is None:
        raise BadSampleError(f"image with {image.shape[2]} channels: {path}")
    return cv2.cvtColor(image, code)


def read_mask(path: str | Path) -> np.ndarray:
    """uint8 (H, W) label ids from a single-channel PNG.

    A mask saved as RGB(A) with equal colour channels (a grey PNG some tools write) is
    accepted; a colour-coded mask is refused rather than guessed. A 16-bit mask is
    accepted when every value fits in 8 bits (ids never need more).
    """
    path = Path(path)
    mask = _decode(path, cv2.IMREAD_UNCHANGED)
    if mask.ndim == 3:
        colour = mask[..., :3]
        if not (np.array_equal(colour[..., 0], colour[..., 1])
                and np.array_equal(colour[..., 0], colour[..., 2])):
            raise BadSampleError(
                f"mask has differing colour channels (a colour-coded mask?); expected one "
                f"channel of label ids: {path}"
            )
        mask = colour[..., 0]
    if mask.dtype == np.uint16 and int(mask.max()) < 256:
        return mask.astype(np.uint8)
    if mask.dtype != np.uint8:
        raise BadSampleError(f"mask of type {mask.dtype} with values above 255: {path}")
    return np.ascontiguousarray(mask)


def read_part_mask(path: str | Path) -> np.ndarray:
    """Boolean (H, W) foreground of a binary part mask: any colour channel > 0.

    CelebAMask-HQ's part PNGs decode as RGB with white foreground; alpha is ignored so an
    RGBA copy does not turn fully opaque pixels into foreground.
    """
    path = Path(path)
    mask = _decode(path, cv2.IMREAD_UNCHANGED)
    return mask[..., :3].any(axis=2) if mask.ndim == 3 else mask > 0


def encode_image(array: np.ndarray, ext: str, jpeg_quality: int = 95) -> bytes:
    """Encode an RGB (H, W, 3) or label (H, W) uint8 array as ``.jpg`` or ``.png`` bytes."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if ext == ".jpg" else []
    ok, buffer = cv2.imencode(ext, array, params)
    if not ok:
        raise OSError(f"could not encode a {array.shape} array as {ext}")
    return buffer.tobytes()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a killed process never leaves a partial file there.

    A failure (disk full, no permission) is an :class:`OSError` naming ``path``, not the
    temporary file beside it that was being written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as err:
        if err.errno is None:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from err  # same subclass by errno
    finally:
        tmp.unlink(missing_ok=True)
