"""Augmentations keep image and mask aligned, labels discrete, padding ignored."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faceparse.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FlipWithLabelSwap,
    denormalize,
    eval_transform,
    train_transform,
)
from faceparse.labels import IGNORE_INDEX, SCHEMES, get_scheme, mapping_lut

NO_COLOUR = {"color_jitter": 0.0, "blur_noise": 0.0}
SEEDS = range(24)

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def block_mask(
    rng: np.random.Generator, height: int, width: int, block: int, ids: list[int]
) -> np.ndarray:
    """A label map of ``block``-pixel squares, each a random id from ``ids``."""
    grid = rng.choice(ids, size=(-(-height // block), -(-width // block))).astype(np.uint8)
    return np.kron(grid, np.ones((block, block), dtype=np.uint8))[:height, :width]


def run(transform, image: np.ndarray, mask: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply a seeded albumentations pipeline; return (H, W, 3) uint8 RGB and (H, W) mask."""
    transform.set_random_seed(seed)
    out = transform(image=image, mask=mask)
    image_t, mask_t = out["image"], out["mask"]
    assert isinstance(image_t, torch.Tensor) and isinstance(mask_t, torch.Tensor)
    return denormalize(image_t[None].numpy())[0], mask_t.numpy()


def nearest_colour(image: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Index of the nearest palette colour of each pixel."""
    dist = ((image[..., None, :].astype(np.int32) - palette.astype(np.int32)) ** 2).sum(-1)
    return dist.argmin(-1)


def agreement(image: np.ndarray, mask: np.ndarray, colour_class: np.ndarray,
              palette: np.ndarray) -> float:
    """Fraction of labelled pixels whose colour says the class that the mask says."""
    valid = mask != IGNORE_INDEX
    return float((nearest_colour(image, palette)[valid] == colour_class[mask[valid]]).mean())


def erode(region: np.ndarray) -> np.ndarray:
    """Pixels of a boolean region whose 8 neighbours are in the region too."""
    padded = np.pad(region, 1, constant_values=True)
    h, w = region.shape
    shifts = [(dy, dx) for dy in (0, 1, 2) for dx in (0, 1, 2)]
    return np.all([padded[dy : dy + h, dx : dx + w] for dy, dx in shifts], axis=0)


def test_train_transform_keeps_image_and_mask_aligned(rng: np.random.Generator) -> None:
    """The image colour encodes the (side-free) class: after scale/rotate/translate/flip
    with left/right swap, the colour under each labelled pixel still names its label."""
    scheme = get_scheme("facesynthetics")
    to_ourface = mapping_lut(scheme, "ourface")
    palette = get_scheme("ourface").palette_array()[:11]
    transform = train_transform(64, scheme, hflip=0.5, **NO_COLOUR)
    scores, misaligned = [], []
    for seed in SEEDS:
        mask = block_mask(rng, 96, 80, 24, list(range(scheme.num_classes)))
        image = palette[to_ourface[mask]]
        out_image, out_mask = run(transform, image, mask, seed)
        assert out_image.shape == (64, 64, 3) and out_mask.shape == (64, 64)
        scores.append(agreement(out_image, out_mask, to_ourface, palette))
        misaligned.append(agreement(out_image, np.roll(out_mask, 16, axis=1), to_ourface, palette))
    assert min(scores) > 0.85, scores
    assert np.mean(scores) > 0.9
    # The measure can tell: a mask shifted against its image scores far lower.
    assert np.mean(misaligned) < 0.5


@pytest.mark.parametrize("name", list(SCHEMES))
def test_train_mask_values_stay_within_scheme_ids(name: str, rng: np.random.Generator) -> None:
    scheme = get_scheme(name)
    transform = train_transform(32, scheme)  # every augmentation on, colour included
    allowed = set(range(scheme.num_classes)) | {IGNORE_INDEX}
    for seed in range(8):
        mask = block_mask(rng, 48, 40, 4, [*range(scheme.num_classes), IGNORE_INDEX])
        image = rng.integers(0, 256, size=(48, 40, 3), dtype=np.uint8)
        _, out_mask = run(transform, image, mask, seed)
        assert out_mask.dtype == np.uint8
        assert set(np.unique(out_mask).tolist()) <= allowed


def test_masks_are_never_interpolated(rng: np.random.Generator) -> None:
    """Ids {0, 5, 9} (no sides in ourface): linear interpolation would create 2, 4, 7, ..."""
    ids = [0, 5, 9]
    train = train_transform(64, "ourface", scale=(0.7, 1.3), rotate=30.0)
    evaluate = eval_transform(64)
    for seed in SEEDS:
        mask = block_mask(rng, 90, 70, 3, ids)
        image = rng.integers(0, 256, size=(90, 70, 3), dtype=np.uint8)
        _, out_train = run(train, image, mask, seed)
        _, out_eval = run(evaluate, image, mask, seed)
        assert set(np.unique(out_train).tolist()) <= {*ids, IGNORE_INDEX}
        assert set(np.unique(out_eval).tolist()) <= set(ids)


def test_affine_padding_is_ignored_in_mask_and_black_in_image() -> None:
    image = np.full((32, 32, 3), 200, dtype=np.uint8)
    mask = np.ones((32, 32), dtype=np.uint8)
    transform = train_transform(
        32, "ourface", scale=(0.5, 0.5), rotate=0.0, translate=0.0, hflip=0.0, **NO_COLOUR
    )
    out_image, out_mask = run(transform, image, mask, 0)
    padded = out_mask == IGNORE_INDEX
    # Half the size in each direction: about three quarters of the output is padding.
    assert 0.6 < padded.mean() < 0.9
    assert padded[0, 0] and padded[-1, -1] and out_mask[16, 16] == 1
    assert (out_image[padded] == 0).all()
    assert (np.abs(out_image[out_mask == 1].astype(int) - 200) <= 1).all()
    assert set(np.unique(out_mask).tolist()) == {1, IGNORE_INDEX}


def test_large_translation_pads_with_ignore(rng: np.random.Generator) -> None:
    transform = train_transform(32, "ourface", translate=0.4, **NO_COLOUR)
    mask = np.ones((32, 32), dtype=np.uint8)
    image = rng.integers(1, 256, size=(32, 32, 3), dtype=np.uint8)
    padded_runs = 0
    for seed in SEEDS:
        out_image, out_mask = run(transform, image, mask, seed)
        padded = out_mask == IGNORE_INDEX
        padded_runs += bool(padded.any())
        # Away from the edge of the content (where the image is interpolated), pure fill.
        assert (out_image[erode(padded)] == 0).all()
    assert padded_runs > len(SEEDS) // 2


def _eye_on_image_right(scheme_name: str) -> tuple[np.ndarray, np.ndarray]:
    """A skin face with a left-eye (viewer's right side of the image) blob."""
    mask = np.ones((32, 48), dtype=np.uint8)
    mask[8:14, 34:42] = get_scheme(scheme_name).index("left_eye")
    image = np.zeros((32, 48, 3), dtype=np.uint8)
    image[..., 0] = np.arange(48, dtype=np.uint8)[None, :] * 5  # a horizontal ramp
    return image, mask


def test_flip_with_label_swap_moves_and_relabels_left_eye() -> None:
    scheme = get_scheme("facesynthetics")
    image, mask = _eye_on_image_right("facesynthetics")
    out = FlipWithLabelSwap(scheme.flip_lut(), p=1.0)(image=image, mask=mask)
    right_eye, left_eye = scheme.index("right_eye"), scheme.index("left_eye")
    assert (right_eye, left_eye) == (3, 4)
    assert (out["mask"][8:14, 6:14] == right_eye).all()
    assert not (out["mask"] == left_eye).any()
    assert (out["mask"][:, 24:] == 1).all()
    np.testing.assert_array_equal(out["image"], image[:, ::-1])


def test_train_transform_flip_swaps_sides() -> None:
    image, mask = _eye_on_image_right("facesynthetics")
    transform = train_transform(
        32, "facesynthetics", scale=(1.0, 1.0), rotate=0.0, translate=0.0, hflip=1.0, **NO_COLOUR
    )
    out_image, out_mask = run(transform, image, mask, 0)
    assert out_mask.shape == (32, 32)
    eye = np.argwhere(out_mask == 3)
    assert len(eye) and eye[:, 1].max() < 16  # right-eye id, now on the image's left
    assert not (out_mask == 4).any()
    assert out_image[0, 0, 0] > out_image[0, -1, 0]  # the ramp is mirrored too


def test_flip_probability_is_respected() -> None:
    image, mask = _eye_on_image_right("facesynthetics")
    transform = train_transform(
        32, "facesynthetics", scale=(1.0, 1.0), rotate=0.0, translate=0.0, hflip=0.5, **NO_COLOUR
    )
    flips = sum((run(transform, image, mask, seed)[1] == 3).any() for seed in range(40))
    assert 8 <= flips <= 32


def test_flip_in_ourface_keeps_ids(rng: np.random.Generator) -> None:
    mask = block_mask(rng, 32, 48, 4, list(range(11)))
    image = rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    out = FlipWithLabelSwap(get_scheme("ourface").flip_lut(), p=1.0)(image=image, mask=mask)
    np.testing.assert_array_equal(out["mask"], mask[:, ::-1])


def test_eval_transform_shapes_and_types(rng: np.random.Generator) -> None:
    image = rng.integers(0, 256, size=(50, 40, 3), dtype=np.uint8)
    mask = block_mask(rng, 50, 40, 5, [0, 3, 7])
    out = eval_transform(32)(image=image, mask=mask)
    assert out["image"].shape == (3, 32, 32) and out["image"].dtype == torch.float32
    assert out["mask"].shape == (32, 32) and out["mask"].dtype == torch.uint8
    assert set(out["mask"].unique().tolist()) <= {0, 3, 7}


def test_eval_transform_is_deterministic(rng: np.random.Generator) -> None:
    image = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    mask = block_mask(rng, 32, 32, 4, [0, 4, 5])
    a, b = eval_transform(32)(image=image, mask=mask), eval_transform(32)(image=image, mask=mask)
    assert torch.equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["mask"].numpy(), mask)  # same size: no resampling


def test_normalisation_uses_imagenet_statistics() -> None:
    image = np.full((16, 16, 3), 255, dtype=np.uint8)
    out = eval_transform(16)(image=image, mask=np.zeros((16, 16), np.uint8))["image"]
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out[:, 0, 0], expected, atol=1e-4, rtol=0)


def test_denormalize_inverts_normalisation(rng: np.random.Generator) -> None:
    images = rng.integers(0, 256, size=(2, 16, 24, 3), dtype=np.uint8)
    mask = np.zeros((16, 16), np.uint8)
    normalised = np.stack(
        [eval_transform(16)(image=im, mask=mask)["image"].numpy() for im in images[:, :, :16]]
    )
    restored = denormalize(normalised)
    assert restored.shape == (2, 16, 16, 3) and restored.dtype == np.uint8
    assert np.abs(restored.astype(int) - images[:, :, :16].astype(int)).max() <= 1
    # Direct inverse on float arrays, non-square.
    floats = images.transpose(0, 3, 1, 2).astype(np.float32) / 255
    mean = np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, np.float32)[:, None, None]
    back = denormalize((floats - mean) / std)
    assert back.shape == (2, 16, 24, 3)
    assert np.abs(back.astype(int) - images.astype(int)).max() <= 1


@pytest.mark.parametrize(("options", "message"), [
    ({"scale": 1.2}, r"data.augment.scale=1.2: the zoom range is two numbers"),
    ({"scale": [1.0]}, r"data.augment.scale=\[1.0\]: the zoom range"),
    ({"scale": [0, 0.0001]}, r"data.augment.scale=\[0,0.0001\]: .*0.25 <= low"),  # all padding
    ({"scale": [1.2, 0.9]}, r"data.augment.scale=\[1.2,0.9\]: .*low <= high"),
    ({"rotate": "abc"}, "data.augment.rotate=abc: the largest rotation in degrees"),
    ({"rotate": -5}, "data.augment.rotate=-5: the largest rotation"),
    ({"translate": "abc"}, "data.augment.translate=abc: the largest shift"),
    ({"translate": 0.7}, "data.augment.translate=0.7: the largest shift is a share of the "
                         "side below 0.5"),
])
def test_geometric_augmentation_values_are_refused_by_name(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        train_transform(64, "ourface", **options)


def test_downscaled_masks_stay_centred_on_their_images() -> None:
    """A label edge lands where the image's edge does: no drift toward the bottom right
    (OpenCV's plain nearest-neighbour shifts a 4x downscale by 3/8 of an output pixel)."""
    shifts = []
    for edge in np.random.default_rng(0).integers(100, 1900, 60):
        mask = np.zeros((2048, 2048), np.uint8)
        mask[:, edge:] = 1
        image = np.zeros((2048, 2048, 3), np.uint8)
        out = eval_transform(512)(image=image, mask=mask)["mask"]
        first = int(np.argmax(np.asarray(out)[0] == 1))
        shifts.append(first - edge / 4)
    assert abs(float(np.mean(shifts))) < 0.2, np.mean(shifts)
