"""One place that turns a ``ckpt=`` argument into a runnable net for prediction.

Everything that predicts (the :class:`~faceparse.inference.predictor.Parser`, the predict
command, the bench) loads through :func:`load_model`, so another runtime (an ONNX Runtime
session) plugs in here and nowhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from faceparse.checkpoints import load_face_parser, locate_checkpoint, read_checkpoint
from faceparse.checkpoints.format import vit_modules
from faceparse.checkpoints.load import check_vit_weights, warn_unused_vit_weights
from faceparse.fast_path import FastPath
from faceparse.inference.batch import prepare_for_inference
from faceparse.labels import LabelScheme
from faceparse.onnx_sniff import is_onnx_model, is_torch_file
from faceparse.option_values import path_value

__all__ = ["LoadedModel", "load_model", "resolve_device"]

log = logging.getLogger(__name__)

Net = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class LoadedModel:
    """A net (normalised float NCHW -> logits NCHW) and what running it needs to know.

    ``image_size`` is the side the checkpoint was trained at (``None``: not recorded);
    input sides must be multiples of ``size_multiple``. ``vit_files``: the DINOv3 files
    the ViT weights came from, for a checkpoint without them (the original project's
    ``decoder.ckpt``, a decoder-only export): half the model, so outputs record them too.
    """

    net: Net
    scheme: LabelScheme
    image_size: int | None
    size_multiple: int
    device: torch.device
    source: Path
    vit_files: tuple[Path, ...] = ()


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` is CUDA when there is one; ``cuda`` without a GPU is refused clearly."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device={device}: not a device; use auto, cpu or cuda (cuda:N)"
                         ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device}: no CUDA GPU is available here; use device=cpu")
    return resolved


def load_model(ckpt: str | Path, vit_weights: str | Path | None = None,
               device: str | torch.device = "auto", trust_pickle: bool = False,
               fast_path: FastPath | None = None, bf16: bool | None = None) -> LoadedModel:
    """Any checkpoint ``load_face_parser`` takes, a run folder, or an exported ONNX model
    (told apart by their bytes: a renamed file still goes to the reader that can read it).

    ``bf16``: whether inference will run in bf16 autocast (``None``: where it is the faster
    path), which decides where ``fast_path.frozen_vit_bf16=auto`` stores the ViT in bf16.
    An ONNX file runs through onnxruntime (``pip install 'faceparse[export]'``): no
    training code, its scheme and sizes read from the file's metadata.
    """
    located = locate_checkpoint(ckpt)
    if vit_weights is not None:  # Hydra's vit_weights=123 is an int
        vit_weights = path_value("vit_weights", vit_weights, "a DINOv3 weight file")
    if is_onnx_model(located.path) or (located.path.suffix.lower() == ".onnx"
                                       and not is_torch_file(located.path)):
        if fast_path is not None and fast_path != FastPath():
            raise ValueError(f"ckpt={ckpt} is an ONNX model, run by onnxruntime: the fast_path "
                             f"options are PyTorch's; drop them, or pass the .ckpt it was "
                             f"exported from")
        warn_unused_vit_weights(check_vit_weights(vit_weights), located.path)  # it holds its ViT
        return _load_onnx(located.path, device)
    file = read_checkpoint(located.path, trust_pickle)  # names the file if it is no checkpoint
    net, scheme = load_face_parser(file, vit_weights, trust_pickle)
    # a checkpoint's own ViT weights leave weights_file unset (build_net): only files here
    vit_files = tuple(Path(vit.weights_file) for vit in vit_modules(net).values()
                      if vit.weights_file)
    target = resolve_device(device)
    net = prepare_for_inference(net, target, fast_path, bf16)
    image_size = (file.metadata or {}).get("image_size")
    return LoadedModel(net, scheme, int(image_size) if image_size else None,
                       int(net.size_multiple), target, located.path, vit_files)


def _load_onnx(path: Path, device: str | torch.device) -> LoadedModel:
    from faceparse.deploy import load_onnx_parser  # onnxruntime is an optional extra
    from faceparse.deploy.runtime import CUDA_PROVIDER, require_onnxruntime

    target = resolve_device(device)
    # the CPU-only onnxruntime of faceparse[export] on a GPU machine: auto means its CPU
    fallback = (str(device) == "auto" and target.type == "cuda"
                and CUDA_PROVIDER not in require_onnxruntime().get_available_providers())
    net = load_onnx_parser(path, device="cpu" if fallback else str(target))
    provider = net.session.get_providers()[0]
    if fallback:
        log.warning("%s runs on onnxruntime's %s: this onnxruntime has no %s (pip install "
                    "onnxruntime-gpu to run it on the GPU)", path.name, provider, CUDA_PROVIDER)
    else:
        log.info("%s runs on onnxruntime's %s", path.name, provider)
    # outputs come back on the CPU: the predictor moves inputs to model.device
    return LoadedModel(net, net.scheme, net.image_size, net.size_multiple,
                       torch.device("cpu"), path)
