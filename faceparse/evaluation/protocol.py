"""The evaluation protocol, stated in words and in JSON beside every score.

Published face-parsing numbers often fail to reproduce because the protocol is left
unstated; the report therefore records which classes are averaged, the resolution
scored, the dataset's label order, split, sample count, TTA and the exact checkpoint.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Protocol", "file_fingerprint"]


def file_fingerprint(path: str | Path, chunk: int = 2**20) -> str:
    """sha256 of a file's bytes: which checkpoint exactly was scored."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Protocol:
    """Everything that changes a score, besides the weights themselves."""

    checkpoint: str
    checkpoint_sha256: str
    model_labels: str
    dataset: str
    dataset_labels: str  # the order the dataset's masks are read in (its merge order)
    scored_labels: str
    source: str  # original files, or the prepared copy (resized, JPEG)
    split: str
    samples: int
    skipped: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # at listing: no mask, a twin name
    resolution: str = "model"
    image_size: int = 512
    tta: str = "none"
    precision: str = "fp32"
    background: list[str] = field(default_factory=list)
    averaged: list[str] = field(default_factory=list)
    ignore_index: int = 255
    data_from: str = "the command line"  # or the run's own config file
    data_root: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)  # data.dataset, resolved
    vit_weights: str | None = None  # the DINOv3 file a checkpoint without ViT weights read
    vit_weights_sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "skipped_count": len(self.skipped),
                "left_out_count": len(self.left_out), "text": self.describe()}

    def _left_out(self) -> str:
        if not self.left_out:
            return ""
        return (f"; {len(self.left_out)} images left out when listing: without a mask, or "
                f"sharing a name")

    def describe(self) -> str:
        where = (f"at the model input size {self.image_size}x{self.image_size} (masks resized "
                 f"nearest-neighbour)" if self.resolution == "model" else
                 f"at each mask's own resolution (the image resized to its mask; logits "
                 f"from {self.image_size} px resized bilinearly)")
        return (
            f"{self.samples} images of the {self.dataset} '{self.split}' split "
            f"({len(self.skipped)} bad samples skipped{self._left_out()}) from its "
            f"{self.source}, masks read in the "
            f"'{self.dataset_labels}' order and scored in '{self.scored_labels}' "
            f"(the model predicts '{self.model_labels}'), {where}. One confusion matrix "
            f"over the split; pixels labelled {self.ignore_index} are ignored. Mean F1 "
            f"averages the foreground classes present in the ground truth "
            f"({', '.join(self.averaged) or 'none'}; background: "
            f"{', '.join(self.background)}); mIoU averages every class present. "
            f"TTA: {self.tta}. Precision: {self.precision}. Checkpoint {self.checkpoint} (sha256 "
            f"{self.checkpoint_sha256[:16]}...){self._vit()}. Data options from "
            f"{self.data_from}{f' (root {self.data_root})' if self.data_root else ''}."
        )

    def _vit(self) -> str:
        if not self.vit_weights:
            return ""
        return f" with the ViT of {self.vit_weights} (sha256 {self.vit_weights_sha256[:16]}...)"
