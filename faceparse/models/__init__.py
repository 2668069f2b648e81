"""Model parts, one family per file: the encoder contract, VGG and DINOv3 branches, their
fusion, the coarse-to-fine decoder and the face parser that wires them."""

from faceparse.models.base import Encoder
from faceparse.models.decoder import CoarseToFineDecoder
from faceparse.models.dinov3 import DinoVitEncoder
from faceparse.models.faceparser import FaceParser
from faceparse.models.fusion import DualEncoder, VitPyramidEncoder
from faceparse.models.fusion_ops import (
    ConcatFusion,
    CrossAttentionFusion,
    GatedFusion,
    SumFusion,
    VitInjection,
    VitOnlyFusion,
)
from faceparse.models.vgg import VggEncoder

__all__ = [
    "CoarseToFineDecoder",
    "ConcatFusion",
    "CrossAttentionFusion",
    "DinoVitEncoder",
    "DualEncoder",
    "Encoder",
    "FaceParser",
    "GatedFusion",
    "SumFusion",
    "VggEncoder",
    "VitInjection",
    "VitOnlyFusion",
    "VitPyramidEncoder",
]
