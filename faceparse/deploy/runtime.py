"""Run an exported ONNX face parser with onnxruntime, called like the torch net.

Self-contained on purpose: ``faceparse.predict`` (and any deployment) loads a
``model.onnx`` with :func:`load_onnx_parser` and needs no model or training code. The
label scheme, class names, input size and size multiple travel in the ONNX file's
``metadata_props`` (written by :mod:`faceparse.deploy.exporters`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from faceparse.labels import LabelScheme, get_scheme

__all__ = ["CUDA_PROVIDER", "META_PREFIX", "OnnxFaceParser", "load_onnx_parser",
           "require_onnxruntime"]

T = TypeVar("T")
META_PREFIX = "faceparse."  # metadata_props keys: faceparse.labels, faceparse.class_names, ...
CUDA_PROVIDER = "CUDAExecutionProvider"


def require_onnxruntime():
    """Import onnxruntime, or say how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("running ONNX models needs onnxruntime: pip install "
                          "'faceparse[export]'") from None
    return onnxruntime


def _scheme(meta: dict[str, str], path: Path) -> LabelScheme:
    names = _metadata_value(meta, "class_names", path, _class_names)
    labels = _metadata_value(meta, "labels", path, str)
    try:
        scheme = get_scheme(labels)
    except KeyError:
        return LabelScheme(labels, names)
    return scheme if scheme.class_names == names else LabelScheme(labels, names)


def _class_names(text: str) -> tuple[str, ...]:
    names = json.loads(text)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError("not a JSON list of class names")
    return tuple(names)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("not a positive whole number")
    return value


def _metadata_value(meta: dict[str, str], key: str, path: Path, parse: Callable[[str], T]
                    ) -> T:
    """``parse(meta[key])``, or one ValueError naming the file and the key: a damaged or
    hand-edited export must not fail later as a bare ``KeyError`` or a modulo by zero."""
    if key not in meta:
        raise ValueError(f"{path}: its faceparse metadata is damaged ({META_PREFIX}{key} is "
                         f"missing); re-export it with python -m faceparse.export")
    try:
        return parse(meta[key])
    except ValueError as err:  # json.JSONDecodeError is one
        raise ValueError(f"{path}: its faceparse metadata is damaged ({META_PREFIX}{key}="
                         f"{meta[key]!r:.80}: {err}); re-export it with python -m "
                         f"faceparse.export") from None


def _check_class_count(path: Path, scheme: LabelScheme, output_shape: list) -> None:
    """The recorded class names must be one per output channel (when the graph fixes it):
    otherwise every mask written says the wrong thing about its labels."""
    channels = output_shape[1] if len(output_shape) > 1 else None
    if isinstance(channels, int) and channels != scheme.num_classes:
        raise ValueError(f"{path} records {scheme.num_classes} class names "
                         f"({META_PREFIX}class_names) for a model with {channels} output "
                         f"channels: the names would label its masks wrongly; re-export it")


def _session(ort, path: Path, options, providers: list[str]):
    """onnxruntime's session for ``path``; a file it cannot read is one ValueError naming it
    (onnxruntime's own errors are neither ValueError nor OSError, and print as tracebacks)."""
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is not a valid ONNX model: the file is empty (re-export it "
                         f"with python -m faceparse.export)")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # InvalidProtobuf, InvalidArgument, Fail, ...: all mean the file
        reason = " ".join(str(err).split())[:300]
        raise ValueError(f"onnxruntime cannot load {path} ({type(err).__name__}: {reason}): "
                         f"a damaged or non-ONNX file? re-export it with "
                         f"python -m faceparse.export") from None


class OnnxFaceParser:
    """Normalised float (B, 3, H, W) tensor in, logits tensor out, like :class:`FaceParser`.

    ``scheme``, ``image_size`` (the side it was exported at / trained at), ``size_multiple``
    and ``dynamic`` (whether other sizes and batch sizes are accepted) come from the file.
    """

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None
                 ) -> None:
        ort = require_onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        providers = ([CUDA_PROVIDER, "CPUExecutionProvider"]
                     if str(device).startswith("cuda") else ["CPUExecutionProvider"])
        if providers[0] not in ort.get_available_providers():
            raise ValueError(f"device={device}: this onnxruntime has no {providers[0]}: use "
                             f"device=cpu, or pip install onnxruntime-gpu for CUDA")
        options = ort.SessionOptions()
        if threads:  # default: onnxruntime's own choice (one per physical core)
            options.intra_op_num_threads = int(threads)
        self.session = _session(ort, self.path, options, providers)
        meta = {k.removeprefix(META_PREFIX): v
                for k, v in self.session.get_modelmeta().custom_metadata_map.items()
                if k.startswith(META_PREFIX)}
        if "class_names" not in meta:
            raise ValueError(f"{self.path} was not exported by faceparse (no "
                             f"{META_PREFIX}class_names metadata): export it with "
                             f"python -m faceparse.export")
        self.scheme = _scheme(meta, self.path)
        _check_class_count(self.path, self.scheme, self.session.get_outputs()[0].shape)
        self.num_classes = self.scheme.num_classes
        self.image_size = _metadata_value(meta, "image_size", self.path, _positive_int)
        self.size_multiple = _metadata_value(meta, "size_multiple", self.path, _positive_int)
        self.dynamic = meta.get("dynamic") == "true"
        self.input_name = self.session.get_inputs()[0].name

    def check_input_size(self, x: torch.Tensor) -> None:
        """The same refusals as the torch net, plus the fixed size of a static export."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.size_multiple or w % self.size_multiple:
            raise ValueError(f"input {h}x{w} is not a multiple of {self.size_multiple}")
        fixed = self.session.get_inputs()[0].shape
        if not self.dynamic and list(x.shape[1:]) != list(fixed[1:]):
            raise ValueError(f"{self.path.name} was exported for input {fixed} only, got "
                             f"{list(x.shape)}: export with dynamic=true for other sizes")

    def check_image_size(self, side: int) -> None:
        """Refuse a square input ``side`` a static export cannot take before any work is
        done (a predict run would otherwise stop at its first batch, its folder made)."""
        fixed = self.session.get_inputs()[0].shape
        if not self.dynamic and list(fixed[2:]) != [side, side]:
            raise ValueError(f"image_size={side}: {self.path.name} was exported for input "
                             f"{fixed} only: drop image_size=, or export with dynamic=true "
                             f"for other sizes")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for ``x``; a static export's fixed batch is filled chunk by chunk."""
        self.check_input_size(x)
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        batch = self.session.get_inputs()[0].shape[0]
        if self.dynamic or not isinstance(batch, int) or batch == len(array):
            return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])
        outputs = []
        for start in range(0, len(array), batch):
            chunk = array[start:start + batch]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), 0)])
            outputs.append(self.session.run(None, {self.input_name: padded})[0][:len(chunk)])
        return torch.from_numpy(np.concatenate(outputs))

    def eval(self) -> OnnxFaceParser:  # so code written for nn.Module can call it
        return self


def load_onnx_parser(path: str | Path, device: str = "cpu", threads: int | None = None
                     ) -> OnnxFaceParser:
    """An exported ``model.onnx`` as a callable parser with its scheme and image size;
    ``threads`` caps onnxruntime's intra-op threads (``None``: its default)."""
    return OnnxFaceParser(path, device, threads)
