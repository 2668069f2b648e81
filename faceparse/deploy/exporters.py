"""Write a face parser as ONNX or TorchScript, the whole net (DINOv3 ViT with RoPE included).

ONNX goes through ``torch.onnx.export``'s TorchScript-based exporter, TorchScript through
``torch.jit.trace``; both trace the ViT's RoPE tables as ops of the input size
(:func:`~faceparse.deploy.traceable_rope.traceable_rope`; timm's are constants of the
export size), so a ``dynamic`` export accepts any batch and any side that is a multiple
of the patch size, and computes what the torch net does there. The scheme, class names, image size
and size multiple are stored in the file's ``metadata_props``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from faceparse.deploy.runtime import META_PREFIX, load_onnx_parser
from faceparse.deploy.traceable_rope import traceable_rope
from faceparse.labels import LabelScheme

__all__ = ["FORMATS", "export_net", "export_onnx", "export_torchscript", "onnx_metadata"]

OPSET = 17


def onnx_metadata(scheme: LabelScheme, image_size: int, size_multiple: int, dynamic: bool
                  ) -> dict[str, str]:
    return {
        f"{META_PREFIX}labels": scheme.name,
        f"{META_PREFIX}class_names": json.dumps(list(scheme.class_names)),
        f"{META_PREFIX}image_size": str(image_size),
        f"{META_PREFIX}size_multiple": str(size_multiple),
        f"{META_PREFIX}dynamic": "true" if dynamic else "false",
    }


def export_onnx(net: nn.Module, out: Path, scheme: LabelScheme, image_size: int,
                dynamic: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """Write ``out`` and return the onnxruntime parser that runs it (for the parity check)."""
    try:
        import onnx
    except ImportError:
        raise ImportError("exporting to ONNX needs onnx and onnxruntime: pip install "
                          "'faceparse[export]'") from None
    example = torch.zeros(1, 3, image_size, image_size)
    axes = {"images": {0: "batch", 2: "height", 3: "width"},
            "logits": {0: "batch", 2: "height", 3: "width"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
        torch.onnx.export(net, (example,), str(out), input_names=["images"],
                          output_names=["logits"], dynamic_axes=axes, opset_version=OPSET,
                          dynamo=False)
    model = onnx.load(str(out))
    for key, value in onnx_metadata(scheme, image_size, net.size_multiple, dynamic).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(out))
    return load_onnx_parser(out)


def export_torchscript(net: nn.Module, out: Path, scheme: LabelScheme, image_size: int,
                       dynamic: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """Trace to TorchScript; the scheme and sizes go in the archive's ``extra_files``."""
    example = torch.zeros(1, 3, image_size, image_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, example, check_trace=False)
    extra = {"faceparse.json": json.dumps(
        {k.removeprefix(META_PREFIX): v
         for k, v in onnx_metadata(scheme, image_size, net.size_multiple, dynamic).items()})}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated, still the portable format
        torch.jit.save(traced, str(out), _extra_files=extra)
        return torch.jit.load(str(out))


FORMATS: dict[str, Callable[..., Callable[[torch.Tensor], torch.Tensor]]] = {
    "onnx": export_onnx,
    "torchscript": export_torchscript,
}


def export_net(net: nn.Module, out: str | Path, fmt: str, scheme: LabelScheme,
               image_size: int, dynamic: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """Export ``net`` (eval mode, CPU) to ``out`` as ``fmt``; return the loaded export."""
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt} is unknown: choose one of {', '.join(FORMATS)}")
    if image_size % net.size_multiple:
        raise ValueError(f"image_size={image_size} is not a multiple of the model's "
                         f"{net.size_multiple}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with traceable_rope(net):
        return FORMATS[fmt](net.eval().cpu(), out, scheme, image_size, dynamic)
