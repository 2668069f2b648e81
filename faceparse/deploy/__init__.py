"""Deployment: export a face parser to ONNX or TorchScript, check parity, run it anywhere.

:mod:`faceparse.deploy.runtime` needs only onnxruntime, numpy and torch (for tensors in
and out), no training code.
"""

from faceparse.deploy.exporters import FORMATS, export_net
from faceparse.deploy.parity import ParityError, ParityReport, check_parity, parity_inputs
from faceparse.deploy.runtime import OnnxFaceParser, load_onnx_parser

__all__ = ["FORMATS", "OnnxFaceParser", "ParityError", "ParityReport", "check_parity",
           "export_net", "load_onnx_parser", "parity_inputs"]
