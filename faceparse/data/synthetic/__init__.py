"""Synthetic faces: a procedural portrait renderer with exact labels, and the dataset on it."""

from faceparse.data.synthetic.dataset import SyntheticFaces
from faceparse.data.synthetic.render import (
    render_face,
    render_face_with_landmarks,
    write_facesynthetics,
)

__all__ = ["SyntheticFaces", "render_face", "render_face_with_landmarks", "write_facesynthetics"]
