"""Albumentations pipelines for training and evaluation.

Masks always use nearest-neighbour interpolation and pad with the ignore id (255), so
label values after any transform stay within the scheme's ids plus 255. A horizontal
flip swaps left/right ids in schemes that keep sides apart.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2
from omegaconf import ListConfig

from faceparse.labels import IGNORE_INDEX, LabelScheme, get_scheme
from faceparse.option_values import is_number, number, shown

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FlipWithLabelSwap",
    "train_transform",
    "eval_transform",
    "denormalize",
    "seed_transform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FlipWithLabelSwap(A.HorizontalFlip):
    """Horizontal flip that also relabels left <-> right parts in the mask."""

    def __init__(self, flip_lut: Sequence[int] | np.ndarray, p: float = 0.5) -> None:
        super().__init__(p=p)
        self.flip_lut = np.asarray(flip_lut, dtype=np.uint8)

    def apply_to_mask(self, mask: np.ndarray, **params: Any) -> np.ndarray:
        return self.flip_lut[super().apply_to_mask(mask, **params)]


# OpenCV's INTER_NEAREST samples corner-aligned, biased up to half an output pixel toward
# the bottom right when downscaling; the _EXACT variant is centre-aligned like the image's
MASK_RESIZE = cv2.INTER_NEAREST_EXACT


def _finish() -> list[A.BasicTransform]:
    return [A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()]


def train_transform(
    image_size: int,
    scheme: str | LabelScheme,
    scale: Sequence[float] = (0.85, 1.15),
    rotate: float = 15.0,
    translate: float = 0.08,
    hflip: float = 0.5,
    color_jitter: float = 0.5,
    blur_noise: float = 0.2,
) -> A.Compose:
    """Resize, random scale/rotate/translate, flip with label swap, colour and blur/noise."""
    for name, p in (("hflip", hflip), ("color_jitter", color_jitter),
                    ("blur_noise", blur_noise)):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ValueError(f"data.augment.{name}={p!r}: a probability, from 0 to 1")
    scale = _scale_range(scale)
    number("data.augment.rotate", rotate, 0, "the largest rotation in degrees")
    if number("data.augment.translate", translate, 0, "the largest shift, a share of the "
              "side,") >= 0.5:
        raise ValueError(f"data.augment.translate={shown(translate)}: the largest shift is a "
                         f"share of the side below 0.5 (0.08: up to 8%)")
    flip_lut = get_scheme(scheme).flip_lut()
    return A.Compose([
        A.Resize(image_size, image_size, interpolation=cv2.INTER_LINEAR,
                 mask_interpolation=MASK_RESIZE),
        A.Affine(scale=scale, translate_percent=(-translate, translate),
                 rotate=(-rotate, rotate), keep_ratio=True, interpolation=cv2.INTER_LINEAR,
                 mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_CONSTANT,
                 fill=0, fill_mask=IGNORE_INDEX, p=1.0),
        FlipWithLabelSwap(flip_lut, p=hflip),
        A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03, p=color_jitter),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(std_range=(0.02, 0.08))],
                p=blur_noise),
        *_finish(),
    ])


# below this zoom-out the face shrinks to a few pixels and most of the mask is padding
MIN_SCALE = 0.25


def _scale_range(scale: Any) -> tuple[float, float]:
    """``data.augment.scale`` as (low, high): two numbers, MIN_SCALE <= low <= high."""
    values = list(scale) if isinstance(scale, (list, tuple, ListConfig)) else None
    if (values is None or len(values) != 2 or not all(is_number(v) for v in values)
            or not MIN_SCALE <= values[0] <= values[1]):
        raise ValueError(f"data.augment.scale={shown(scale)}: the zoom range is two numbers "
                         f"[low,high], {MIN_SCALE:g} <= low <= high, e.g. [0.85,1.15] "
                         f"(1: no zoom)")
    return float(values[0]), float(values[1])


def eval_transform(image_size: int) -> A.Compose:
    """Resize to the evaluation size (nearest for masks) and normalise."""
    return A.Compose([
        A.Resize(image_size, image_size, interpolation=cv2.INTER_LINEAR,
                 mask_interpolation=MASK_RESIZE),
        *_finish(),
    ])


def seed_transform(transform: A.BaseCompose, seed: int) -> None:
    """Give a pipeline ONE numpy and ONE python generator, shared by all its transforms.

    Albumentations' ``set_random_seed`` gives every child its own generator with the same
    seed, which correlates their draws and leaves no single state to checkpoint.
    """
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def denormalize(images: np.ndarray) -> np.ndarray:
    """(B, 3, H, W) normalised float images -> (B, H, W, 3) uint8 RGB for pictures."""
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None, None]
    rgb = (images * std + mean).clip(0, 1) * 255
    return rgb.round().astype(np.uint8).transpose(0, 2, 3, 1)
