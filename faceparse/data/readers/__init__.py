"""Dataset readers, one per distributed layout, on one base class (and the prepared copy)."""

from faceparse.data.readers.base import FaceParsingDataset
from faceparse.data.readers.celebamask import CelebAMaskHQ
from faceparse.data.readers.facesynthetics import FaceSynthetics
from faceparse.data.readers.files import FileDataset, PairedFileDataset
from faceparse.data.readers.folder import ImageMaskFolder
from faceparse.data.readers.helen import Helen
from faceparse.data.readers.lapa import LaPa

__all__ = [
    "CelebAMaskHQ",
    "FaceParsingDataset",
    "FaceSynthetics",
    "FileDataset",
    "Helen",
    "ImageMaskFolder",
    "LaPa",
    "PairedFileDataset",
]
