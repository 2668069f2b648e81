"""The visualization's legend names every class present, however short the photo (a
60 px photo showed 4 of its 6 classes, an 8 px one none)."""

from __future__ import annotations

import numpy as np
import pytest

from faceparse.inference.outputs import visualization
from faceparse.inference.predictor import ParseResult
from faceparse.labels import get_scheme


@pytest.mark.parametrize("height", [8, 60, 400])
def test_every_class_present_gets_its_colour_in_the_legend(height: int) -> None:
    scheme = get_scheme("ourface")
    width = 30
    labels = np.zeros((height, width), np.uint8)
    classes = [0, 1, 2, 4, 7, 10]
    for n, class_id in enumerate(classes):
        labels[:, n * 5:(n + 1) * 5] = class_id
    rgb = np.full((height, width, 3), 128, np.uint8)
    picture = visualization(rgb, ParseResult(labels, scheme), alpha=0.5)
    assert picture.shape[0] == max(height, 14 * len(classes))
    assert (picture[height:, : 2 * width] == 255).all()  # photo and overlay padded white
    legend = picture[:, 2 * width:]
    palette = scheme.palette_array()
    for class_id in classes:
        colour = palette[class_id]
        assert (legend == colour).all(axis=-1).any(), scheme.class_names[class_id]
    absent = palette[3]  # a class not in the mask is not in the legend
    assert not (legend == absent).all(axis=-1).any()
