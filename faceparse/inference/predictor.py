"""The Python predictor: a checkpoint in, label maps at each photo's own size out.

    parser = Parser.from_checkpoint("outputs/train/runs/<run>")   # or a .ckpt file
    result = parser("photo.jpg")            # or a PIL image, an HxWx3 uint8 array, a tensor
    result.labels, result.class_names, result.color()

Preprocessing is the training's evaluation transform (resize + ImageNet normalisation);
the model's logits are resized back to the photo before the argmax (:mod:`.resize`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from faceparse.data.transforms import IMAGENET_MEAN, eval_transform
from faceparse.fast_path import FastPath, inference_bf16
from faceparse.inference.faces import Box, FaceDetector, expand_box, unusable_reason
from faceparse.inference.images import to_rgb
from faceparse.inference.model import LoadedModel, load_model
from faceparse.inference.resize import labels_at_size, logits_hwc, softmax_classes, strips
from faceparse.labels import LabelScheme, colorize, get_scheme, mapping_lut
from faceparse.models.dinov3 import has_bf16_frozen_vit
from faceparse.option_values import boolean, number, whole_number

__all__ = ["CROPS", "ParseResult", "Parser", "Placement", "UnusableBoxWarning",
           "check_batch_size", "check_parser_options"]

CROPS = ("none", "faces", "box")
PRECISIONS = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


class UnusableBoxWarning(UserWarning):
    """A given box (crop=box) left out: empty or outside its photo, so no crop of it."""


def check_parser_options(image_size: object, keep_aspect: object, margin: object) -> None:
    """The options a parser takes as typed (``predict`` checks them before the model loads):
    Hydra passes ``keep_aspect=no`` or ``margin=abc`` on as text."""
    if image_size is not None:
        whole_number("image_size", image_size, 1,
                     "the model input side in pixels (null: the checkpoint's own)")
    boolean("keep_aspect", keep_aspect)
    number("margin", margin, 0, "the share of a face box added on each side of its crop")


def check_batch_size(batch_size: int) -> None:
    """Refuse a batch size that cannot batch (0 would never advance, torch says "range()")."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: use a whole number of at least 1")


@dataclass
class ParseResult:
    """``labels`` (H, W) uint8 ids of ``scheme`` at the photo's size; ``probs`` (C, H, W)
    float16 when asked, one channel per class of the *model's* scheme, in the order of
    ``prob_class_names`` (with ``labels=`` that differs from ``class_names``); ``boxes``
    the face crops used (crop=faces|box; empty when no face was found or no given box lies
    in the photo: the labels are then all background, and ``faceparse.predict`` writes
    nothing for that photo);
    ``unusable_boxes`` the given boxes left out (crop=box: empty or outside the photo).
    """

    labels: np.ndarray
    scheme: LabelScheme
    probs: np.ndarray | None = None
    boxes: list[Box] = field(default_factory=list)
    unusable_boxes: list[Box] = field(default_factory=list)
    prob_class_names: tuple[str, ...] | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.scheme.class_names

    def color(self) -> np.ndarray:
        """The label map in the scheme's palette colours, RGB uint8."""
        return colorize(self.labels, self.scheme)


@dataclass(frozen=True)
class Placement:
    """Where a photo (or crop) sits in the square model input: rows and columns used."""

    top: int
    left: int
    height: int
    width: int


class Parser:
    """Parse photos with a loaded model; see the module docstring.

    Args:
        model: from :func:`~faceparse.inference.model.load_model`.
        image_size: model input side; default the checkpoint's training size.
        keep_aspect: letterbox instead of stretching; the padding is cropped off again.
        crop: ``none`` (the photo is one face), ``faces`` (detect faces, parse each crop
            and paste the logits back) or ``box`` (boxes given per call).
        margin: share of the box size added on each side of a face crop.
        labels: write label maps in this scheme (name-based mapping); default the model's.
        precision: ``auto`` (bf16 autocast where it is faster: a bf16 GPU, a CPU with fast
            bf16; fp32 otherwise) or a
            Lightning precision string (``32-true``, ``bf16-mixed``, ``16-mixed``).
    """

    def __init__(self, model: LoadedModel, image_size: int | None = None,
                 keep_aspect: bool = False, crop: str = "none", margin: float = 0.4,
                 labels: str | None = None, precision: str = "auto", batch_size: int = 8,
                 detector: FaceDetector | None = None) -> None:
        self.model = model
        check_parser_options(image_size, keep_aspect, margin)
        size = image_size or model.image_size
        if size is None:
            raise ValueError(f"{model.source} does not record the image size it was trained "
                             f"at: pass image_size=<the data.image_size it was trained with>")
        if size % model.size_multiple:
            raise ValueError(f"image_size={size} must be a multiple of "
                             f"{model.size_multiple} for this model")
        if crop not in CROPS:
            raise ValueError(f"crop={crop}: choose one of {', '.join(CROPS)}")
        check_batch_size(batch_size)
        if not isinstance(model.net, torch.nn.Module):  # an onnxruntime model
            _check_onnx_options(model, size, precision)
        if precision == "auto":  # bf16 where it is the faster path on this device
            precision = "bf16-mixed" if inference_bf16(model.device) else "32-true"
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision}: choose auto or one of "
                             f"{', '.join(PRECISIONS)}")
        torch_net = isinstance(model.net, torch.nn.Module)  # not an onnxruntime model
        if (PRECISIONS[precision] is not torch.bfloat16 and torch_net
                and has_bf16_frozen_vit(model.net)):
            raise ValueError(
                f"precision={precision}, but the loaded model's frozen ViT is stored in bf16 "
                f"(fast_path.frozen_vit_bf16), so it would run in bf16 anyway: load it with "
                f"Parser.from_checkpoint(..., precision={precision!r}), or set "
                f"fast_path.frozen_vit_bf16=false")
        self.image_size, self.keep_aspect, self.crop, self.margin = size, keep_aspect, crop, margin
        self.autocast_dtype = PRECISIONS[precision]
        # what the labels are computed in (recorded with each mask): an ONNX model runs fp32
        self.precision = precision if torch_net else "32-true"
        self.batch_size = batch_size
        self.out_scheme = get_scheme(labels) if labels else model.scheme
        self.lut = mapping_lut(model.scheme, self.out_scheme) if labels else None
        self.unmapped = ([n for i, n in enumerate(model.scheme.class_names) if self.lut[i] == 255]
                         if self.lut is not None else [])
        self.detector = detector if detector is not None or crop != "faces" else FaceDetector()
        self._transform = eval_transform(size)
        self._background = (model.scheme.index("background")
                            if "background" in model.scheme.class_names else 0)

    @classmethod
    def from_checkpoint(cls, path: str | Path, vit_weights: str | Path | None = None,
                        device: str = "auto", trust_pickle: bool = False,
                        fast_path: FastPath | None = None, **options) -> Parser:
        """A parser for a checkpoint file or a training run folder; ``options`` as above.

        ``fast_path``: the speed options (default: :class:`~faceparse.fast_path.FastPath`'s).
        The model is prepared for the ``precision`` asked for: in fp32 its frozen ViT stays
        fp32 (``fast_path.frozen_vit_bf16=auto`` stores it in bf16 only for bf16 runs).
        """
        precision = options.get("precision", "auto")
        bf16 = None if precision == "auto" else str(precision).startswith("bf16")
        return cls(load_model(path, vit_weights, device, trust_pickle, fast_path, bf16),
                   **options)

    @property
    def scheme(self) -> LabelScheme:
        return self.out_scheme

    # ------------------------------------------------------------------ model side

    def prepare(self, rgb: np.ndarray) -> tuple[torch.Tensor, Placement]:
        """The normalised (3, S, S) model input for an RGB photo and where it sits in it."""
        s = self.image_size
        height, width = rgb.shape[:2]
        if not self.keep_aspect:
            return self._transform(image=rgb)["image"], Placement(0, 0, s, s)
        scale = s / max(height, width)
        h, w = max(1, round(height * scale)), max(1, round(width * scale))
        canvas = np.empty((s, s, 3), np.uint8)
        # the mean colour is zero once normalised: the padding carries no signal
        canvas[:] = np.round(np.asarray(IMAGENET_MEAN) * 255).astype(np.uint8)
        top, left = (s - h) // 2, (s - w) // 2
        canvas[top:top + h, left:left + w] = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA
                                                         if scale < 1 else cv2.INTER_LINEAR)
        return self._transform(image=canvas)["image"], Placement(top, left, h, w)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits (N, C, S, S) for normalised inputs, ``batch_size`` at a time, float32."""
        device = self.model.device
        outputs = []
        with torch.inference_mode(), torch.autocast(device.type, self.autocast_dtype or
                                                    torch.float32,
                                                    enabled=self.autocast_dtype is not None):
            for chunk in batch.split(self.batch_size):
                outputs.append(self.model.net(chunk.to(device, non_blocking=True)).float())
        return torch.cat(outputs)

    def photo_logits(self, rgbs: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Per photo (crop=none), the model-resolution logits of the region it occupies."""
        prepared = [self.prepare(rgb) for rgb in rgbs]
        logits = self.forward(torch.stack([t for t, _ in prepared]))
        return [lg[:, p.top:p.top + p.height, p.left:p.left + p.width]
                for lg, (_, p) in zip(logits, prepared, strict=True)]

    # ------------------------------------------------------------------ photo side

    def finish(self, logits: torch.Tensor, size: tuple[int, int], probs: bool,
               boxes: list[Box] | None = None) -> ParseResult:
        """Model-resolution logits -> a result at ``size`` in the output scheme."""
        labels, prob = labels_at_size(logits, size, probs)
        return self._result(labels, prob, boxes or [])

    def _result(self, labels: np.ndarray, probs: np.ndarray | None, boxes: list[Box]
                ) -> ParseResult:
        if self.lut is not None:
            labels = self.lut[labels]
        return ParseResult(labels, self.out_scheme, probs, boxes, prob_class_names=None
                           if probs is None else self.model.scheme.class_names)

    def _paste(self, rgb: np.ndarray, boxes: list[Box], probs: bool) -> ParseResult:
        """Parse each box and paste its logits back; background outside every box."""
        crops = [rgb[y0:y1, x0:x1] for x0, y0, x1, y1 in boxes]
        logits = self.photo_logits(crops) if crops else []
        return self.paste(rgb.shape[:2], boxes, logits, probs)

    def paste(self, size: tuple[int, int], boxes: Sequence[Box], logits: Sequence[torch.Tensor],
              probs: bool = False) -> ParseResult:
        """Each box's model-resolution logits resized into it; where boxes overlap the more
        confident one wins; background outside every box."""
        labels = np.full(size, self._background, np.uint8)
        best = np.full(size, -np.inf, np.float32)  # winning probability where boxes overlap
        prob = None
        if probs:
            prob = np.zeros((self.model.scheme.num_classes, *size), np.float16)
            prob[self._background] = 1
        for (x0, y0, x1, y1), box_logits in zip(boxes, logits, strict=True):
            for start, stop, strip in strips(logits_hwc(box_logits), (y1 - y0, x1 - x0)):
                soft = softmax_classes(strip)
                ids = soft.argmax(-1)
                score = np.take_along_axis(soft, ids[..., None], -1)[..., 0]
                rows = slice(y0 + start, y0 + stop)
                win = score > best[rows, x0:x1]
                labels[rows, x0:x1][win] = ids[win]
                best[rows, x0:x1][win] = score[win]
                if prob is not None:
                    region = prob[:, rows, x0:x1]
                    region[:, win] = soft[win].T
        return self._result(labels, prob, list(boxes))

    def _crops(self, rgb: np.ndarray, boxes: Sequence[Box] | None
               ) -> tuple[list[Box], list[Box]]:
        """The crops for one photo (detected faces or given boxes, with the margin) and the
        boxes that leave none (a detected face always lies inside)."""
        height, width = rgb.shape[:2]
        if self.crop == "faces":
            boxes = self.detector(rgb)
        elif boxes is None:
            raise ValueError("crop=box needs boxes for every image (boxes= / a boxes JSON file)")
        grown = [(box, expand_box(box, self.margin, width, height)) for box in boxes]
        return [g for _, g in grown if g], [box for box, g in grown if g is None]

    def boxes_for(self, rgb: np.ndarray, boxes: Sequence[Box] | None) -> list[Box]:
        """The crops for one photo: detected faces or given boxes, with the margin; a given
        box that leaves no crop is an :class:`UnusableBoxWarning`, not lost unsaid."""
        crops, unusable = self._crops(rgb, boxes)
        if unusable:
            height, width = rgb.shape[:2]
            warnings.warn(f"{unusable_reason(unusable, width, height)}; left out",
                          UnusableBoxWarning, stacklevel=2)
        return crops

    def __call__(self, image, probs: bool = False, boxes: Sequence[Box] | None = None
                 ) -> ParseResult:
        """Parse one photo: a path, PIL image, HxWx3 uint8 RGB array or 3xHxW tensor."""
        results = self.predict_batch([image], probs, [boxes] if boxes is not None else None,
                                     warn=False)
        _warn_unusable([image], results, stacklevel=2)
        return results[0]

    def predict_batch(self, images: Sequence, probs: bool = False,
                      boxes: Sequence[Sequence[Box] | None] | None = None, *,
                      warn: bool = True) -> list[ParseResult]:
        """Parse several photos of any sizes; one forward pass per ``batch_size``.

        With crop=box, a given box that is empty or outside its photo is left out (in the
        result's ``unusable_boxes``) with an :class:`UnusableBoxWarning` naming it; a photo
        none of whose boxes is usable is all background. ``warn=False``: the caller reports
        ``unusable_boxes`` itself (the folder command names the file and counts them).
        No images: an empty list.
        """
        if boxes is not None and self.crop != "box":
            raise ValueError(f"boxes need a parser made with crop='box'; this one has "
                             f"crop='{self.crop}', which would ignore them")
        rgbs = [to_rgb(image) for image in images]
        if not rgbs:
            return []
        if self.crop == "none":
            return [self.finish(logits, rgb.shape[:2], probs)
                    for rgb, logits in zip(rgbs, self.photo_logits(rgbs), strict=True)]
        given = boxes if boxes is not None else [None] * len(rgbs)
        results = []
        for rgb, b in zip(rgbs, given, strict=True):
            crops, unusable = self._crops(rgb, b)
            results.append(self._paste(rgb, crops, probs))
            results[-1].unusable_boxes = unusable
        if warn:
            _warn_unusable(images, results, stacklevel=2)
        return results


def _check_onnx_options(model: LoadedModel, size: int, precision: str) -> None:
    """An ONNX model runs fp32 in onnxruntime, at its export size unless dynamic: refuse
    a precision it would ignore (as the PyTorch-only fast_path options are refused) and a
    static export's other size now, not at the first batch after outputs were made."""
    if precision in PRECISIONS and precision != "32-true":
        raise ValueError(f"precision={precision}: {model.source} is an ONNX model, run by "
                         f"onnxruntime in fp32; drop precision=, or pass the .ckpt it was "
                         f"exported from")
    check_size = getattr(model.net, "check_image_size", None)  # a static export's
    if check_size is not None:
        check_size(size)


def _warn_unusable(images: Sequence, results: list[ParseResult], stacklevel: int) -> None:
    """One :class:`UnusableBoxWarning` per photo with boxes left out, naming the photo (its
    path, or its place in a batch), the boxes, its size and what was parsed instead."""
    for i, (image, result) in enumerate(zip(images, results, strict=True)):
        if not result.unusable_boxes:
            continue
        height, width = result.labels.shape
        where = (f"{image}: " if isinstance(image, (str, Path)) else
                 f"images[{i}]: " if len(images) > 1 else "")
        then = ("left out, its other boxes are parsed" if result.boxes else
                "no usable box, so its labels are all background")
        warnings.warn(f"{where}{unusable_reason(result.unusable_boxes, width, height)}; "
                      f"{then}", UnusableBoxWarning, stacklevel=stacklevel + 1)
