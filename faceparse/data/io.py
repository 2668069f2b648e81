"""Robust image and mask file I/O shared by every dataset reader and the prepare step.

Real downloads contain truncated JPEGs (OpenCV decodes those into grey-filled images
with only a console warning), grayscale, RGBA and 16-bit files. Readers here either
convert such inputs to what training expects or raise :class:`BadSampleError` naming the
file, so a dataset can skip the sample (or stop, in strict mode) instead of training on
garbage. Writes are atomic: a temporary name, then ``os.replace``.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "BadSampleError",
    "worker_message",
    "refuse_jpeg_mask",
    "JPEG_MASK_ADVICE",
    "DatasetNotFoundError",
    "png_size",
    "read_file",
    "read_image",
    "read_mask",
    "read_part_mask",
    "encode_image",
    "write_atomic",
    "png_text",
    "jpeg_is_complete",
    "MaskSchemeError",
    "SCHEME_TEXT_KEY",
    "PNG_SIGNATURE",
    "read_png_text",
    "recorded_scheme",
    "scheme_mismatch",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# the PNG text key under which a label mask records its scheme (faceparse.predict writes it)
SCHEME_TEXT_KEY = "faceparse:labels"
_TEXT_HEAD = 1 << 16  # a PNG's text chunks (before its image data) lie far inside this


# how torch re-raises a loader worker's exception in the main process: its type, made
# from this text (torch.utils.data._utils.ExceptionWrapper.reraise)
_WORKER_TEXT = re.compile(r"\ACaught (\w+) [^\n]*\nOriginal Traceback")


def worker_message(text: str) -> str | None:
    """The message of the exception a loader worker raised, from the text torch re-raises
    it with (the worker's whole traceback); ``None`` when ``text`` is no such text."""
    wrapped = _WORKER_TEXT.match(text)
    if wrapped is None:
        return None
    lines = list(re.finditer(rf"^(?:[\w.]+\.)?{wrapped.group(1)}: ", text, re.MULTILINE))
    return text[lines[-1].end():].rstrip("\n") if lines else None


class BadSampleError(ValueError):
    """One sample cannot be used (corrupt file, wrong size, unknown labels).

    Raised in a loader worker, torch re-makes it in the main process with the worker's
    whole traceback as its message; the sample's one-line message is taken back out of it
    (so any loader's caller can print it as one ``error:`` line), and the worker's
    traceback is kept as a note (shown with the trace, e.g. ``HYDRA_FULL_ERROR=1``).
    """

    def __init__(self, *args: object) -> None:
        text = args[0] if len(args) == 1 and isinstance(args[0], str) else None
        message = None if text is None else worker_message(text)
        if message is None:
            super().__init__(*args)
            return
        super().__init__(message)
        if hasattr(self, "add_note"):  # Python 3.11+: shown with the trace
            self.add_note(text)
        self.worker_traceback = text


class DatasetNotFoundError(FileNotFoundError):
    """The dataset root or its split files are missing; the message says what to get."""


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise BadSampleError(f"cannot read {path}: {err.strerror or err}") from err


def _check_complete(data: bytes, path: Path) -> None:
    """Refuse a cut JPEG or PNG (OpenCV decodes a cut JPEG into a grey-filled image with
    only a console warning) and one declaring too many pixels."""
    if data[:2] == b"\xff\xd8" and not jpeg_is_complete(data):
        raise BadSampleError(f"truncated JPEG (no end-of-image marker after the last scan): {path}")
    if data[:8] == PNG_SIGNATURE and data.rfind(b"IEND") < data.rfind(b"IDAT"):
        raise BadSampleError(f"truncated PNG (no IEND chunk): {path}")
    refuse_too_many_pixels(data, path)


def _decode(path: Path, flags: int, data: bytes | None = None) -> np.ndarray:
    """Decode a file once it is known complete and not too large, or raise
    :class:`BadSampleError`."""
    data = _read_bytes(path) if data is None else data
    _check_complete(data, path)
    try:
        array = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None
    except cv2.error as err:  # e.g. a header claiming more pixels than OpenCV allows
        raise BadSampleError(f"not a decodable image ({err.err or err}): {path}") from None
    if array is None or array.size == 0:
        raise BadSampleError(f"not a decodable image: {path}")
    return array


def jpeg_is_complete(data: bytes) -> bool:
    """Whether the JPEG stream in ``data`` reaches its end-of-image marker.

    The marker segments are walked from the start, so whatever follows the image (the
    video of a phone's "motion photo", a vendor trailer) is never mistaken for it, and a
    thumbnail inside the EXIF segment is skipped with its segment.
    """
    pos, end = 2, len(data)
    while pos + 1 < end:
        if data[pos] != 0xFF:
            return False  # not at a marker: a damaged stream
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0xD9:
            return True
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        if pos + 4 > end:
            return False
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xDA:  # entropy-coded data runs to the next marker but RSTn or FF00
            while True:
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= end:
                    return False
                following = data[pos + 1]
                if following == 0 or 0xD0 <= following <= 0xD7:
                    pos += 2
                elif following == 0xFF:
                    pos += 1
                else:
                    break
    return False


def refuse_too_many_pixels(data: bytes, path: Path) -> None:
    """Refuse a file whose header declares more pixels than Pillow's decompression-bomb
    limit (``2 * PIL.Image.MAX_IMAGE_PIXELS``, as ``faceparse.predict`` applies), before
    anything is decoded: a few hundred bytes of PNG can ask for gigabytes, in every loader
    worker at once."""
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    if not limit:
        return  # the user switched Pillow's limit off
    try:
        size = _declared_size(data)
    except Image.DecompressionBombError:  # Pillow refused it on the header alone
        size = None, None
    if size is not None and (size[0] is None or size[0] * size[1] > limit):
        pixels = "more pixels than that" if size[0] is None else f"{size[0]}x{size[1]} pixels"
        raise BadSampleError(f"image of {pixels} is over the limit of {limit / 1e6:.0f} "
                             f"megapixels (2 x PIL.Image.MAX_IMAGE_PIXELS); downscale it: "
                             f"{path}")


def png_size(head: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's first 24 bytes (its IHDR chunk); ``None`` if ``head``
    does not start a PNG."""
    if head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return None


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """Width and height as the header declares them (nothing decoded); ``None`` for a
    format Pillow does not read (OpenCV then decides). A PNG's (every mask) are read
    straight from its IHDR chunk."""
    png = png_size(data)
    if png is not None:
        return png
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Image.DecompressionBombError:
        raise
    except Exception:  # noqa: BLE001 - not for Pillow to say
        return None


def _to_uint8(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array >> 8).astype(np.uint8)
    raise BadSampleError(f"unsupported pixel type {array.dtype} in {path}")


TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
# OpenCV's TIFF decoder turns a TIFF by its orientation tag whatever the flags say: the
# stored pixels back from the turned ones, per orientation (each turn undone)
_UNTURN = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, 1),
           7: lambda a: a[::-1, ::-1].swapaxes(0, 1), 8: lambda a: np.rot90(a, -1)}


def _stored_tiff_pixels(image: np.ndarray, data: bytes) -> np.ndarray:
    """A TIFF as stored, from what OpenCV decoded (turned by its orientation tag)."""
    try:
        with Image.open(io.BytesIO(data)) as tiff:
            orientation = tiff.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - no readable tag: OpenCV turned nothing either
        return image
    unturn = _UNTURN.get(orientation) if isinstance(orientation, int) else None
    return image if unturn is None else np.ascontiguousarray(unturn(image))


def read_file(path: str | Path) -> bytes:
    """A file's bytes, or :class:`BadSampleError` naming it."""
    return _read_bytes(Path(path))


def read_image(path: str | Path, upright: bool = True, data: bytes | None = None
               ) -> np.ndarray:
    """RGB uint8 (H, W, 3): grayscale is replicated, alpha dropped, 16 bit scaled to 8.

    ``upright``: turned as its EXIF orientation says (as viewers show it), else the stored
    pixels. ``data``: the file's bytes, when read already.
    """
    path = Path(path)
    data = _read_bytes(path) if data is None else data
    flags = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH  # not UNCHANGED: EXIF is applied
    if not upright:
        flags |= cv2.IMREAD_IGNORE_ORIENTATION
    image = _to_uint8(_decode(path, flags, data), path)
    if not upright and data[:4] in TIFF_MAGIC:
        image = _stored_tiff_pixels(image, data)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    code = {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}.get(image.shape[2])
    if code is None:
        raise BadSampleError(f"image with {image.shape[2]} channels: {path}")
    return cv2.cvtColor(image, code)


class MaskSchemeError(BadSampleError):
    """A mask records (in its PNG text) another label scheme than the one it is read in."""


def read_mask(path: str | Path, scheme: str | None = None) -> np.ndarray:
    """uint8 (H, W) label ids from a single-channel PNG.

    A mask saved as RGB(A) with equal colour channels (a grey PNG some tools write) is
    accepted; a colour-coded mask is refused rather than guessed. A 16-bit mask is
    accepted when every value fits in 8 bits (ids never need more). In a palette PNG
    (VOC style) the indices are the ids, whatever colours the palette gives them. A mask
    that records its label scheme (``faceparse.predict`` writes one) is refused with
    :class:`MaskSchemeError` when that is not ``scheme``: its ids would mean other classes.
    """
    path = Path(path)
    data = _read_bytes(path)
    refuse_jpeg_mask(data, path)
    if data[:8] == PNG_SIGNATURE:
        recorded = png_text(data).get(SCHEME_TEXT_KEY)
        if scheme is not None and recorded is not None and recorded != scheme:
            raise MaskSchemeError(scheme_mismatch(path, recorded, scheme))
        if len(data) > 25 and data[12:16] == b"IHDR" and data[25] == 3:
            return _palette_indices(data, path)
    refuse_low_bit_grey(data, path)
    mask = _decode(path, cv2.IMREAD_UNCHANGED, data)
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


JPEG_MASK_ADVICE = ("JPEG is lossy: label ids change along every edge; save masks as PNG "
                    "(lossless)")


def refuse_jpeg_mask(data: bytes, path: Path) -> None:
    """Refuse a mask whose bytes are a JPEG (whatever its name): decoded, its ringing would
    train as wrong ids, or be refused one sample at a time as ids outside the scheme."""
    if data[:2] == b"\xff\xd8":
        raise BadSampleError(f"mask is a JPEG file; {JPEG_MASK_ADVICE}: {path}")


def refuse_low_bit_grey(data: bytes, path: Path) -> None:
    """Refuse a 1, 2 or 4-bit grey PNG mask: its values mean ids to the tool that saved ids
    (PIL's mode "1": 0/1) and grey levels to one that shrank an 8-bit 0/255 mask (optipng:
    1 is white, 255, ignore); either reading would be silently wrong for the other."""
    if (data[:8] == PNG_SIGNATURE and len(data) > 25 and data[12:16] == b"IHDR"
            and data[25] == 0 and data[24] in (1, 2, 4)):
        raise BadSampleError(f"mask is a {data[24]}-bit grey PNG, whose values read as ids "
                             f"(0, 1, ...) or as grey levels (0 ... 255) depending on the tool "
                             f"that wrote it; save it as an 8-bit PNG of ids: {path}")


def read_png_text(path: str | Path) -> dict[str, str] | None:
    """The text chunks of a PNG file, read from its first bytes only (they come right
    after its header); ``None`` when the file is no PNG."""
    with open(path, "rb") as file:
        head = file.read(_TEXT_HEAD)
    return png_text(head) if head[:8] == PNG_SIGNATURE else None


def recorded_scheme(path: str | Path) -> str | None:
    """The label scheme a mask PNG records in its text, or ``None`` (untagged, not a PNG)."""
    try:
        text = read_png_text(path)
    except OSError as err:
        raise BadSampleError(f"cannot read {path}: {err.strerror or err}") from err
    return None if text is None else text.get(SCHEME_TEXT_KEY)


def scheme_mismatch(path: Path, recorded: str, scheme: str) -> str:
    """The message for a mask whose recorded scheme is not the one it is read in."""
    return (f"mask records label scheme {recorded!r} (its ids mean that scheme's classes), "
            f"but it is read as {scheme!r}: set data.dataset.scheme={recorded} to read it in "
            f"its own scheme: {path}")


def _palette_indices(data: bytes, path: Path) -> np.ndarray:
    """The indices of a palette PNG (OpenCV would expand them to the palette's colours)."""
    _check_complete(data, path)
    try:
        with Image.open(io.BytesIO(data)) as image:
            indices = np.array(image)
    except Exception as err:  # noqa: BLE001 - any decoder failure is a bad file
        raise BadSampleError(f"not a decodable image ({err}): {path}") from None
    return indices.astype(np.uint8, copy=False)


def png_text(data: bytes) -> dict[str, str]:
    """The ``tEXt`` chunks of a PNG before its image data: keyword -> text."""
    text, pos = {}, len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        if kind in (b"IDAT", b"IEND"):
            break
        if kind == b"tEXt":
            key, _, value = data[pos + 8:pos + 8 + length].partition(b"\0")
            text[key.decode("latin-1")] = value.decode("latin-1")
        pos += 12 + length
    return text


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
