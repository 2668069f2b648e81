"""The samples an evaluation scores: each read once, bad ones skipped *and* named.

Training replaces a bad sample by the next good one (a batch must be full); a score
must not count that neighbour twice, so here a bad sample is left out and its files
are reported. Masks come in the scoring scheme, at the model input size or at the
mask's own size (``original=True``; the reader resizes the image to its mask), while the
image is always resized to the model input.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from faceparse.data.io import BadSampleError
from faceparse.data.readers.base import FaceParsingDataset
from faceparse.data.transforms import eval_transform

__all__ = ["EvalSamples", "collate_samples", "raise_strict_error"]

log = logging.getLogger(__name__)


class EvalSamples(Dataset):
    """Wraps a reader (opened without a transform) for scoring."""

    def __init__(self, reader: FaceParsingDataset, image_size: int, original: bool) -> None:
        self.reader = reader
        self.transform = eval_transform(image_size)
        self.original = original

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name = self.reader.describe(index)
        try:
            image, native = self.reader.load_checked(index)
        except BadSampleError as err:
            if self.reader.strict:  # raised in the main process: a worker's would carry its trace
                return {"bad": name, "error": str(err)}
            log.warning("skipping a bad sample: %s", err)
            return {"bad": name}
        except Exception as err:  # name the files: a loader worker's traceback names none
            raise RuntimeError(f"failed to load {name}: {err!r}") from err
        mask = self.reader.lut[native]
        out = self.transform(image=image, mask=mask)
        if self.original:
            out["mask"] = torch.from_numpy(np.ascontiguousarray(mask))
        return {"image": out["image"], "mask": out["mask"], "name": name}


def collate_samples(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images; keep masks as a list (original sizes differ); list the bad samples
    and, under ``strict``, their errors (:func:`raise_strict_error` raises the first)."""
    good = [it for it in items if "bad" not in it]
    return {
        "image": torch.stack([it["image"] for it in good]) if good else None,
        "mask": [it["mask"] for it in good],
        "name": [it["name"] for it in good],
        "bad": [it["bad"] for it in items if "bad" in it],
        "errors": [it["error"] for it in items if "error" in it],
    }


def raise_strict_error(batch: dict[str, Any]) -> None:
    """Re-raise, in the main process, the first bad sample of a ``strict`` reader: a loader
    worker's exception reaches it wrapped with the worker's traceback as its message."""
    if batch.get("errors"):
        raise BadSampleError(batch["errors"][0])
