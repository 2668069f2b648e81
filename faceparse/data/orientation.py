"""A training photo as its mask was drawn on it, when the photo carries an EXIF orientation.

A phone stores a portrait photo sideways and tags it (EXIF orientation 6 or 8); viewers
and annotation tools (labelme, CVAT) show it turned upright, and a mask drawn there fits the
upright photo. A mask made from the stored pixels fits those instead. Which one a dataset
holds is not written anywhere, so ``data.dataset.exif_orientation`` says it:

- ``auto`` (default): a photo without the tag is read as stored; with it, the photo is
  read the way whose aspect ratio fits its mask. When both fit (a square photo, a photo
  turned 180° or mirrored) nothing tells: the sample is refused, naming the option, rather
  than guessed (a mask turned against its photo trains every pixel as the wrong class);
- ``apply``: always as viewers show it; ``ignore``: always the stored pixels.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from faceparse.data.io import BadSampleError, read_file, read_image

__all__ = ["EXIF_CHOICES", "SWAPS_SIDES", "check_exif_choice", "exif_orientation",
           "read_image_for_mask"]

EXIF_CHOICES = ("auto", "apply", "ignore")
_ORIENTATION_TAG = 0x0112
_TURNED = {2: "mirrored", 3: "turned 180°", 4: "mirrored upside down",
           5: "mirrored and turned 90°", 6: "turned 90°", 7: "mirrored and turned 90°",
           8: "turned 90°"}
SWAPS_SIDES = frozenset({5, 6, 7, 8})  # orientations that swap width and height
_ASPECT_SLACK = 0.01  # as match_image_to_mask: a mask at another scale still fits


def check_exif_choice(value: str) -> str:
    """``value`` if it is one of :data:`EXIF_CHOICES`, else a ValueError naming the option."""
    if value not in EXIF_CHOICES:
        raise ValueError(f"data.dataset.exif_orientation={value!r}: use one of "
                         f"{', '.join(EXIF_CHOICES)}")
    return value


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) an image file's bytes declare; 1 when none or unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            value = image.getexif().get(_ORIENTATION_TAG)
    except Exception:  # noqa: BLE001 - no readable tag: the pixels are as stored
        return 1
    return value if isinstance(value, int) and value in _TURNED else 1


def _fits(height: int, width: int, mask_hw: tuple[int, int]) -> bool:
    return abs(height / width - mask_hw[0] / mask_hw[1]) <= _ASPECT_SLACK * mask_hw[0] / mask_hw[1]


def read_image_for_mask(path: str | Path, mask_hw: tuple[int, int], exif: str = "auto"
                        ) -> np.ndarray:
    """The RGB photo at ``path`` as the mask of size ``mask_hw`` (height, width) was drawn
    on it (see the module's doc); :class:`BadSampleError` naming the photo and the option
    when ``exif="auto"`` cannot tell."""
    path = Path(path)
    if exif != "auto":
        return read_image(path, upright=check_exif_choice(exif) == "apply")
    data = read_file(path)
    orientation = exif_orientation(data)
    upright = read_image(path, data=data)
    if orientation == 1:
        return upright
    height, width = upright.shape[:2]
    stored = (width, height) if orientation in SWAPS_SIDES else (height, width)
    fits_upright, fits_stored = _fits(height, width, mask_hw), _fits(*stored, mask_hw)
    if fits_stored and not fits_upright:
        return read_image(path, upright=False, data=data)
    if fits_upright and fits_stored:
        raise BadSampleError(
            f"{path} is {_TURNED[orientation]} by its EXIF orientation ({orientation}), and "
            f"its mask fits it either way: set data.dataset.exif_orientation=apply if the "
            f"masks were drawn on the photos as viewers show them (labelme and CVAT do), or "
            f"=ignore if on the stored pixels")
    return upright  # fits upright; or neither, which the size check reports
