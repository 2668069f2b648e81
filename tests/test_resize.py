"""Logits resized to the photo in bounded strips; labels are their argmax (inference.resize)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from faceparse.inference.resize import STRIP_BYTES, labels_at_size, logits_hwc, strips

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def torch_resize(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]


def assert_argmax_of(labels: np.ndarray, resized: torch.Tensor, margin: float = 1e-4) -> None:
    """``labels`` is the argmax of ``resized`` (C, H, W) wherever its best class leads the
    runner-up by more than float rounding (our resize and torch's round differently)."""
    top2 = resized.topk(2, dim=0).values
    clear = ((top2[0] - top2[1]) > margin).numpy()
    np.testing.assert_array_equal(labels[clear], resized.argmax(0).numpy()[clear])
    assert clear.mean() > 0.5  # the check covers most pixels


@pytest.mark.parametrize("size", [(37, 53), (9, 8), (150, 90), (16, 40), (64, 16)])
def test_strips_equal_one_full_resize(size):
    logits = torch.randn(5, 16, 16, generator=torch.Generator().manual_seed(0))
    full = torch_resize(logits, size)
    budget = 4 * 5 * size[1] * 3  # three rows at a time
    parts = list(strips(logits_hwc(logits), size, budget))
    assert all(stop - start <= 3 for start, stop, _ in parts)
    assert [p[0] for p in parts] == list(range(0, size[0], 3))
    resized = torch.from_numpy(np.concatenate([s for *_, s in parts])).permute(2, 0, 1)
    torch.testing.assert_close(resized, full, atol=3e-5, rtol=1e-5)
    labels, probs = labels_at_size(logits, size, probs=True, budget=budget)
    assert_argmax_of(labels, full)
    np.testing.assert_allclose(probs.astype(np.float32), full.softmax(0).numpy(), atol=1e-3)


def test_label_map_is_the_argmax_of_the_resized_logits_ties_included():
    """Labels are read from the model-resolution argmax inside regions and from the resized
    logits at boundaries; either way they are the argmax of the resized logits, and on
    exact ties (duplicated classes, quantised logits) the first class wins, as argmax."""
    g = torch.Generator().manual_seed(1)
    smooth = F.interpolate(torch.randn(1, 19, 8, 8, generator=g) * 4, size=(40, 40),
                           mode="bilinear")[0]
    duplicated = torch.cat([smooth[:3], smooth[2:3], smooth[3:]])  # class 3 ties class 2
    for logits in (smooth, (smooth * 2).round() / 2, duplicated,
                   torch.randn(19, 40, 40, generator=g)):
        for size in [(160, 160), (97, 131), (7, 300), (40, 40)]:
            labels, _ = labels_at_size(logits, size, budget=4 * 20 * size[1] * 7)
            ours = np.concatenate([s for *_, s in strips(logits_hwc(logits), size)])
            np.testing.assert_array_equal(labels, ours.argmax(-1))
            assert_argmax_of(labels, torch_resize(logits, size))
    assert ((smooth * 2).round() / 2).unique().numel() < 100  # ties did happen
    assert 3 not in labels_at_size(duplicated, (97, 131))[0]


def test_a_24_megapixel_photo_is_resized_in_bounded_strips():
    logits = logits_hwc(torch.randn(19, 64, 64))
    start, stop, strip = next(strips(logits, (4000, 6000)))
    assert strip.shape == (stop - start, 6000, 19)
    assert strip.nbytes <= STRIP_BYTES < 19 * 4000 * 6000 * 4
