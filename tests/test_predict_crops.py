"""Face crops: given boxes (crop=box) and the ones left out, the face detector (crop=faces),
margins and the boxes file."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image
from test_predict import photo

from faceparse.inference import Parser
from faceparse.inference.faces import FaceDetector, expand_box, read_boxes
from faceparse.inference.predictor import UnusableBoxWarning

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_crop_box_parses_the_box_and_leaves_background_elsewhere(parser):
    rgb = photo(6, (60, 80))
    boxed = Parser(parser.model, crop="box", margin=0.0)
    result = boxed(rgb, boxes=[(10, 5, 50, 45)])
    alone = parser(rgb[5:45, 10:50]).labels
    np.testing.assert_array_equal(result.labels[5:45, 10:50], alone)
    outside = np.ones((60, 80), bool)
    outside[5:45, 10:50] = False
    assert (result.labels[outside] == 0).all()
    with pytest.raises(ValueError, match="crop=box needs boxes"):
        boxed(rgb)


def _unusable_warnings(call) -> tuple[object, list[str]]:
    """What ``call()`` returns and the UnusableBoxWarnings it gave, every one recorded."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = call()
    return value, [str(w.message) for w in caught if w.category is UnusableBoxWarning]


def test_a_given_box_outside_the_photo_is_a_warning_naming_it_not_dropped_silently(
        parser, tmp_path):
    rgb = photo(6, (60, 80))
    boxed = Parser(parser.model, crop="box", margin=0.0)
    good, outside, empty = (10, 5, 50, 45), (100, 0, 120, 20), (30, 30, 30, 40)
    reason = "is empty or outside the 80x60 photo (boxes are [x0, y0, x1, y1] pixel corners)"
    alone, said = _unusable_warnings(lambda: boxed(rgb, boxes=[good]))
    assert said == [] and alone.unusable_boxes == []
    result, said = _unusable_warnings(lambda: boxed(rgb, boxes=[good, outside]))
    assert said == [f"box [100, 0, 120, 20] {reason}; left out, its other boxes are parsed"]
    assert (result.boxes, result.unusable_boxes) == ([good], [outside])
    np.testing.assert_array_equal(result.labels, alone.labels)  # the good box still parsed
    # every box unusable: as the folder command's photo without a usable box, all background
    result, said = _unusable_warnings(lambda: boxed(rgb, boxes=[outside, empty]))
    assert said == ["box [100, 0, 120, 20], [30, 30, 30, 40] are empty or outside the 80x60 "
                    "photo (boxes are [x0, y0, x1, y1] pixel corners); no usable box, so its "
                    "labels are all background"]
    assert (result.labels == 0).all() and (result.boxes, result.unusable_boxes) == (
        [], [outside, empty])
    Image.fromarray(rgb).save(tmp_path / "p.png")  # a batch names each photo: path or place
    _, said = _unusable_warnings(lambda: boxed.predict_batch(
        [rgb, tmp_path / "p.png", rgb], boxes=[[good], [good, outside], [empty]]))
    assert [s.split(": box")[0] for s in said] == [str(tmp_path / "p.png"), "images[2]"]
    crops, said = _unusable_warnings(lambda: boxed.boxes_for(rgb, [good, outside]))
    assert crops == [good] and said == [f"box [100, 0, 120, 20] {reason}; left out"]
    with pytest.warns(UnusableBoxWarning) as record:  # pointing at the caller's line
        boxed(rgb, boxes=[outside])
    assert record[0].filename == __file__
    _, said = _unusable_warnings(lambda: boxed.predict_batch([rgb], boxes=[[outside]],
                                                             warn=False))
    assert said == []


def test_the_detector_finds_the_astronauts_face_and_crop_faces_parses_it(parser):
    skimage_data = pytest.importorskip("skimage.data")
    astronaut = skimage_data.astronaut()
    boxes = FaceDetector()(astronaut)
    assert len(boxes) == 1
    x0, y0, x1, y1 = boxes[0]
    assert 190 < (x0 + x1) / 2 < 250 and 90 < (y0 + y1) / 2 < 140  # her face, not the flag
    result = Parser(parser.model, crop="faces", margin=0.25)(astronaut)
    assert result.boxes == [expand_box(boxes[0], 0.25, 512, 512)]
    bx0, by0, bx1, by1 = result.boxes[0]
    outside = np.ones((512, 512), bool)
    outside[by0:by1, bx0:bx1] = False
    assert (result.labels[outside] == 0).all() and result.labels.shape == (512, 512)


def test_expand_box_and_boxes_file(tmp_path):
    assert expand_box((10, 10, 20, 30), 0.5, 100, 100) == (5, 0, 25, 40)
    assert expand_box((200, 200, 220, 220), 0.1, 100, 100) is None
    (tmp_path / "b.json").write_text('{"a.jpg": [[1, 2, 3, 4]]}')
    assert read_boxes(tmp_path / "b.json") == {"a.jpg": [(1, 2, 3, 4)]}
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json"):
        read_boxes(tmp_path / "bad.json")
    (tmp_path / "f.json").write_text('{"a.jpg": [[1.4, 2.6, 30, 40]], "b.jpg": []}')
    assert read_boxes(tmp_path / "f.json") == {"a.jpg": [(1, 3, 30, 40)], "b.jpg": []}


@pytest.mark.parametrize(("boxes", "message"), [
    ('[[10, 10]]', r'"a.jpg" box \[10, 10\] needs 4 numbers \[x0, y0, x1, y1\]'),
    ('[[1, 2, 3, 4, 5]]', r'"a.jpg" box \[1, 2, 3, 4, 5\] needs 4 numbers'),
    ('[[1, 2, 3, "4"]]', r'"a.jpg" box \[1, 2, 3, "4"\] needs 4 numbers'),
    ('[[1, 2, 3, NaN]]', r'"a.jpg" box \[1, 2, 3, NaN\] needs 4 numbers'),
    ('[[true, 2, 3, 4]]', r'"a.jpg" box \[true, 2, 3, 4\] needs 4 numbers'),
    ('[1, 2, 3, 4]', r'"a.jpg" needs a list of boxes'),
    ('{"x0": 1}', r'"a.jpg" needs a list of boxes'),
])
def test_every_box_is_checked_when_the_file_is_read(tmp_path, boxes, message):
    (tmp_path / "b.json").write_text(f'{{"ok.jpg": [[0, 0, 5, 5]], "a.jpg": {boxes}}}')
    with pytest.raises(ValueError, match=f"boxes={tmp_path}/b.json: {message}"):
        read_boxes(tmp_path / "b.json")
