"""Face boxes for ``crop=faces`` and ``crop=box``: OpenCV's Haar cascade, or a JSON file.

The cascade ships inside opencv (``cv2.data.haarcascades``), so no download and no extra
package. It finds upright, roughly frontal faces; it misses profiles beyond ~45 degrees,
faces rolled more than ~20 degrees, faces under ~1/20 of the photo side (below ``min_size``),
heavily occluded or very dark faces, and it sometimes fires on face-like textures. Its box
covers brows to chin, so crops add a ``margin`` (default 0.4 of the box per side) to take
in hair and ears. Where it fails, give boxes (``crop=box``) or crop=none on aligned faces.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

__all__ = ["Box", "FaceDetector", "expand_box", "read_boxes"]

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, end exclusive


class FaceDetector:
    """Frontal faces with OpenCV's bundled Haar cascade, largest first."""

    def __init__(self, cascade: str = "haarcascade_frontalface_default.xml",
                 min_size: float = 0.05) -> None:
        path = Path(cv2.data.haarcascades) / cascade
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise FileNotFoundError(f"OpenCV's face cascade {path} is missing or unreadable")
        self.min_size = min_size

    def __call__(self, rgb: np.ndarray) -> list[Box]:
        grey = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        side = max(24, round(self.min_size * min(grey.shape)))
        found = self.cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5,
                                              minSize=(side, side))
        boxes = [(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h in found]
        return sorted(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)


def expand_box(box: Box, margin: float, width: int, height: int) -> Box | None:
    """Grow ``box`` by ``margin`` of its size on each side, clipped to the photo;
    ``None`` when nothing of it lies inside the photo."""
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * margin, (y1 - y0) * margin
    grown = (max(0, round(x0 - dx)), max(0, round(y0 - dy)),
             min(width, round(x1 + dx)), min(height, round(y1 + dy)))
    return grown if grown[2] > grown[0] and grown[3] > grown[1] else None


def read_boxes(path: str | Path) -> dict[str, list[Box]]:
    """``{"<file name or stem>": [[x0, y0, x1, y1], ...], ...}`` from a JSON file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"boxes={path}: no such file; crop=box needs a JSON file "
                                f'like {{"photo.jpg": [[x0, y0, x1, y1]]}}')
    try:
        data = json.loads(path.read_text())
        return {str(k): [tuple(int(v) for v in b) for b in boxes] for k, boxes in data.items()}
    except (ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"boxes={path}: expected {{\"photo.jpg\": [[x0, y0, x1, y1]]}} "
                         f"({err})") from err
