"""Model parts: encoders (CNN, ViT, dual), the coarse-to-fine decoder, the face parser."""

from faceparse.models.decoder import CoarseToFineDecoder
from faceparse.models.encoders import DinoVitEncoder, DualEncoder, VggEncoder, VitPyramidEncoder
from faceparse.models.faceparser import FaceParser

__all__ = [
    "CoarseToFineDecoder",
    "DinoVitEncoder",
    "DualEncoder",
    "FaceParser",
    "VggEncoder",
    "VitPyramidEncoder",
]
