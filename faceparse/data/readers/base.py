"""The base class of every dataset reader: native masks in, target-scheme masks out.

Every reader yields ``{"image": float tensor (3, H, W), "mask": uint8 tensor (H, W)}``
with the mask in the configured *target* scheme: subclasses load an RGB uint8 image
and a mask in their native scheme, and the base class maps it through a lookup table.

The base class also guards against bad downloads: an image whose size differs from its
mask's by a scale factor is resized to the mask (CelebAMask-HQ ships 1024 px images
with 512 px masks); a different aspect ratio, ids outside the native scheme or an
unreadable file make the sample *bad*. A bad sample is replaced by the next good one
with a warning naming the file and counted in ``skipped`` (shared with loader workers,
so the loader can report a count per epoch); ``strict=True`` raises instead.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable

import cv2
import numpy as np
from torch.utils.data import Dataset

from faceparse.data.io import BadSampleError
from faceparse.labels import IGNORE_INDEX, LabelScheme, get_scheme, mapping_lut

__all__ = ["FaceParsingDataset", "SPLITS", "Transform", "match_image_to_mask",
           "check_label_values"]

SPLITS = ("train", "val", "test")
Transform = Callable[..., dict]
log = logging.getLogger(__name__)


def match_image_to_mask(image: np.ndarray, mask: np.ndarray, name: str) -> np.ndarray:
    """Resize ``image`` to the mask's size when only the scale differs (1% aspect slack)."""
    (ih, iw), (mh, mw) = image.shape[:2], mask.shape[:2]
    if (ih, iw) == (mh, mw):
        return image
    if abs(ih * mw - iw * mh) > 0.01 * ih * mw:
        raise BadSampleError(f"image is {iw}x{ih} but its mask is {mw}x{mh}: {name}")
    return cv2.resize(image, (mw, mh), interpolation=cv2.INTER_AREA)


def check_label_values(mask: np.ndarray, scheme: LabelScheme, name: str) -> None:
    """Refuse ids outside ``scheme`` (255 = ignore is allowed): a wrong scheme or a bad file."""
    if int(mask.max()) < scheme.num_classes:
        return
    bad = (mask >= scheme.num_classes) & (mask != IGNORE_INDEX)
    if bad.any():
        values = np.unique(mask[bad])[:8].tolist()
        raise BadSampleError(
            f"mask values {values} are outside the {scheme.name!r} scheme "
            f"(ids 0-{scheme.num_classes - 1} and {IGNORE_INDEX}): {name}"
        )


class FaceParsingDataset(Dataset):
    """Maps native masks to the target scheme, then applies the albumentations transform."""

    native_scheme: LabelScheme
    # consecutive bad samples tolerated before a batch is given up (a broken download)
    max_consecutive_bad = 16

    def __init__(
        self, labels: str | LabelScheme, transform: Transform | None = None, strict: bool = False
    ) -> None:
        self.scheme = get_scheme(labels)
        self.lut = mapping_lut(self.native_scheme, self.scheme)
        self.transform = transform
        self.strict = strict
        self.skipped = multiprocessing.Value("q", 0)

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """RGB uint8 (H, W, 3) image and uint8 (H, W) mask in ``native_scheme``."""
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """The files behind a sample, for warnings and errors."""
        return f"sample {index} of {type(self).__name__}"

    def load_checked(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`load`, with the image sized to the mask and the ids checked."""
        image, native = self.load(index)
        name = self.describe(index)
        image = match_image_to_mask(image, native, name)
        check_label_values(native, self.native_scheme, name)
        return image, native

    @property
    def scores_each_sample(self) -> bool:
        """Whether this split is scored (val, test): a bad sample's stand-in then counts
        for nothing instead of counting its neighbour twice; a training batch just needs
        to be full."""
        return getattr(self, "split", "train") != "train"

    def _first_good(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        for attempt in range(min(self.max_consecutive_bad, len(self))):
            current = (index + attempt) % len(self)
            try:
                image, native = self.load_checked(current)
            except BadSampleError as err:
                if self.strict:
                    raise
                with self.skipped.get_lock():
                    self.skipped.value += 1
                log.warning("skipping a bad sample (data.dataset.strict=true stops): %s", err)
                continue
            except Exception as err:  # name the file: loader workers otherwise only say "worker"
                raise RuntimeError(f"failed to load {self.describe(current)}: {err!r}") from err
            if current != index and self.scores_each_sample:
                # a score must not count the neighbour twice: all its pixels are ignored
                native = np.full_like(native, IGNORE_INDEX)
            return image, native
        raise BadSampleError(
            f"{self.max_consecutive_bad} bad samples in a row from {self.describe(index)}; "
            f"is the dataset intact?"
        )

    def __getitem__(self, index: int) -> dict:
        image, native = self._first_good(index)
        mask = self.lut[native]
        if self.transform is None:
            return {"image": image, "mask": mask}
        return self.transform(image=image, mask=mask)
