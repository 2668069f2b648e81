"""What the predict command writes per image, under the original project's names.

``<stem>_mask.png`` (class ids; the scheme and its class names in PNG text chunks, so a
mask file says what its numbers mean), ``<stem>_color.png``, and on request
``<stem>_overlay.png``, ``<stem>_visualization.png`` (photo | overlay, with a legend of the
classes present) and ``<stem>_probs.npz`` (float16 per-class probabilities).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from faceparse.data.io import write_atomic
from faceparse.inference.predictor import ParseResult
from faceparse.labels import LabelScheme

__all__ = ["png_bytes", "output_paths", "overlay", "visualization", "write_outputs",
           "read_mask_scheme"]


def output_paths(out_dir: Path, stem: Path, overlay: bool, probs: bool) -> list[Path]:
    """Every file one input gives; a run skips the input when all of them exist."""
    kinds = ["mask.png", "color.png"] + (["overlay.png", "visualization.png"] if overlay
                                         else []) + (["probs.npz"] if probs else [])
    return [out_dir / stem.parent / f"{stem.name}_{kind}" for kind in kinds]


def png_bytes(array: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", pnginfo=info, compress_level=3)
    return buffer.getvalue()


def read_mask_scheme(path: str | Path) -> tuple[str, list[str]]:
    """The scheme name and class names a ``_mask.png`` records."""
    with Image.open(path) as image:
        return image.text["faceparse:labels"], json.loads(image.text["faceparse:class_names"])


def overlay(rgb: np.ndarray, color: np.ndarray, alpha: float) -> np.ndarray:
    """The palette colours blended over the photo (``alpha`` = weight of the colours)."""
    return cv2.addWeighted(color, alpha, rgb, 1 - alpha, 0)


def _legend(labels: np.ndarray, scheme: LabelScheme, height: int) -> np.ndarray:
    """A white column naming each class present, in its colour."""
    present = [i for i in np.unique(labels) if i < scheme.num_classes]
    row = max(14, min(28, height // max(1, len(present))))
    scale = row / 30
    width = max(120, int(10 * row))
    panel = np.full((height, width, 3), 255, np.uint8)
    palette = scheme.palette_array()
    for n, class_id in enumerate(present):
        y = n * row
        if y + row > height:
            break
        cv2.rectangle(panel, (4, y + 3), (4 + row - 6, y + row - 3),
                      tuple(int(c) for c in palette[class_id]), -1)
        cv2.putText(panel, scheme.class_names[class_id], (row + 2, y + row - 6),
                    cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return panel


def visualization(rgb: np.ndarray, result: ParseResult, alpha: float) -> np.ndarray:
    """Photo | overlay | legend, side by side."""
    blended = overlay(rgb, result.color(), alpha)
    return np.concatenate([rgb, blended, _legend(result.labels, result.scheme, rgb.shape[0])],
                          axis=1)


def write_outputs(out_dir: Path, stem: Path, rgb: np.ndarray, result: ParseResult,
                  save_overlay: bool, alpha: float, model_scheme: LabelScheme) -> list[Path]:
    """Write one input's files (atomically, so an interrupted run leaves no half file)."""
    mask, color, *rest = output_paths(out_dir, stem, save_overlay, result.probs is not None)
    mask.parent.mkdir(parents=True, exist_ok=True)
    text = {"faceparse:labels": result.scheme.name,
            "faceparse:class_names": json.dumps(list(result.class_names))}
    write_atomic(mask, png_bytes(result.labels, text))
    color_rgb = result.color()
    write_atomic(color, png_bytes(color_rgb))
    if save_overlay:
        write_atomic(rest.pop(0), png_bytes(overlay(rgb, color_rgb, alpha)))
        write_atomic(rest.pop(0), png_bytes(visualization(rgb, result, alpha)))
    if result.probs is not None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, probs=result.probs,
                            class_names=np.asarray(model_scheme.class_names))
        write_atomic(rest.pop(0), buffer.getvalue())
    return [mask, color]
