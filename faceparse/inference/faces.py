"""Face boxes for ``crop=faces`` and ``crop=box``: scikit-image's LBP cascade, or a JSON file.

The installed OpenCV 5 wheel no longer ships Haar cascades (``cv2.CascadeClassifier`` moved
to the contrib modules), so the detector is the LBP frontal-face cascade that ships inside
scikit-image (``skimage.data.lbp_frontal_face_cascade_filename``): no download, no extra
package. It finds upright, roughly frontal faces; it misses profiles beyond ~45 degrees,
faces rolled more than ~20 degrees, faces smaller than ``min_size`` (default 1/10 of the
photo's short side), heavily occluded or very dark faces, and it can fire on face-like
textures. Its box covers brows to chin, so crops add a ``margin`` (default 0.4 of the box
per side) to take in hair and ears. Where it fails, give boxes (``crop=box``), or use
crop=none on aligned face photos.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from faceparse.option_values import is_number

__all__ = ["Box", "FaceDetector", "expand_box", "read_boxes", "unusable_reason"]

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, end exclusive


class FaceDetector:
    """Frontal faces with scikit-image's bundled LBP cascade, largest first."""

    def __init__(self, min_size: float = 0.1, scale_factor: float = 1.2) -> None:
        from skimage.data import lbp_frontal_face_cascade_filename
        from skimage.feature import Cascade

        self.cascade = Cascade(lbp_frontal_face_cascade_filename())
        self.min_size, self.scale_factor = min_size, scale_factor

    def __call__(self, rgb: np.ndarray) -> list[Box]:
        short = min(rgb.shape[:2])
        side = max(24, round(self.min_size * short))
        found = self.cascade.detect_multi_scale(img=rgb, scale_factor=self.scale_factor,
                                                step_ratio=1, min_size=(side, side),
                                                max_size=(short, short))
        boxes = [(d["c"], d["r"], d["c"] + d["width"], d["r"] + d["height"]) for d in found]
        return sorted(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)


def expand_box(box: Box, margin: float, width: int, height: int) -> Box | None:
    """Grow ``box`` by ``margin`` of its size on each side, clipped to the photo;
    ``None`` when nothing of it lies inside the photo."""
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * margin, (y1 - y0) * margin
    grown = (max(0, round(x0 - dx)), max(0, round(y0 - dy)),
             min(width, round(x1 + dx)), min(height, round(y1 + dy)))
    return grown if grown[2] > grown[0] and grown[3] > grown[1] else None


def unusable_reason(bad: list[Box], width: int, height: int) -> str:
    """Why ``bad`` boxes give no crop of a ``width`` x ``height`` photo: the one wording
    of the folder command's warnings and the Python API's."""
    shown = ", ".join(str(list(b)) for b in bad)
    return (f"box {shown} {'is' if len(bad) == 1 else 'are'} empty or outside the "
            f"{width}x{height} photo (boxes are [x0, y0, x1, y1] pixel corners)")


def read_boxes(path: str | Path) -> dict[str, list[Box]]:
    """``{"<file name or stem>": [[x0, y0, x1, y1], ...], ...}`` from a JSON file.

    Every box is checked here, before a model loads: a bad one is refused naming the file
    and its key, not met halfway through a folder.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"boxes={path}: no such file; crop=box needs a JSON file "
                                f'like {{"photo.jpg": [[x0, y0, x1, y1]]}}')
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"boxes={path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"boxes={path}: expected {{\"photo.jpg\": [[x0, y0, x1, y1]]}}, got "
                         f"a JSON {type(data).__name__}")
    return {str(key): _boxes_of(path, str(key), boxes) for key, boxes in data.items()}


def _boxes_of(path: Path, key: str, boxes: object) -> list[Box]:
    """One key's boxes as pixel tuples; a ValueError naming the file and key otherwise."""
    if not isinstance(boxes, list) or any(not isinstance(b, list) for b in boxes):
        raise ValueError(f'boxes={path}: "{key}" needs a list of boxes [[x0, y0, x1, y1], '
                         f"...], got {json.dumps(boxes)}")
    for box in boxes:
        if len(box) != 4 or not all(is_number(v) for v in box):
            raise ValueError(f'boxes={path}: "{key}" box {json.dumps(box)} needs 4 numbers '
                             f"[x0, y0, x1, y1]")
    return [tuple(round(v) for v in box) for box in boxes]

