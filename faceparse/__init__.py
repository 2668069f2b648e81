"""faceparse: a dual-encoder (VGG + DINOv3) face parser and its experiment framework."""

__version__ = "0.1.0"
