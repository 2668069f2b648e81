"""CelebAMask-HQ as distributed (30,000 faces, 18 part masks, BiSeNet's 19-class order).

Raw layout under ``data.root``; the part PNGs are merged on the fly, which is slow
(a 1024 px JPEG plus up to 18 PNGs per face): run ``python -m faceparse.prepare
data=celebamask`` once and training reads the merged copy instead.

Merge order: parts are painted in the BiSeNet id order (``faceparse.labels.CELEBAMASK``:
skin, l_brow, r_brow, l_eye, r_eye, eye_g, l_ear, r_ear, ear_r, nose, mouth, u_lip,
l_lip, neck, neck_l, cloth, hair, hat), later parts overwriting earlier ones, exactly
as face-parsing.PyTorch's ``prepropess_data.py`` does. It is the order the widely used
BiSeNet checkpoints and their reported scores assume; other projects' orders give
different ground truth where parts overlap (hair over skin, glasses over eyes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from faceparse.data.io import BadSampleError, DatasetNotFoundError, read_part_mask
from faceparse.data.orientation import read_image_for_mask
from faceparse.data.readers.files import FileDataset
from faceparse.labels import CELEBAMASK

__all__ = ["CelebAMaskHQ", "PARTITION_CODES"]

IMAGES = "CelebA-HQ-img"
PARTS = "CelebAMask-HQ-mask-anno"
MAPPING = "CelebA-HQ-to-CelebA-mapping.txt"
PARTITION = "list_eval_partition.txt"
PARTITION_CODES = {"train": "0", "val": "1", "test": "2"}


class CelebAMaskHQ(FileDataset):
    """CelebAMask-HQ with the official split (24,183 / 2,993 / 2,824 from CelebA's partition)."""

    native_scheme = CELEBAMASK
    title = "CelebAMask-HQ"
    layout = f"""\
  {IMAGES}/{{0..29999}}.jpg                      1024x1024 RGB
  {PARTS}/{{id // 2000}}/{{id:05d}}_{{part}}.png   512x512, one per part (absent = no such part)
  {MAPPING}                  idx orig_idx orig_file
  {PARTITION}                        CelebA's split file, lines '000001.jpg 0'
Get CelebAMask-HQ.zip from https://github.com/switchablenorms/CelebAMask-HQ and
list_eval_partition.txt from CelebA (https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html,
Eval/), unpack both into one folder and pass it as data.root=<folder>."""

    def list_raw(self, split: str) -> list[str]:
        self.require(IMAGES, PARTS, MAPPING, PARTITION)
        partition = _read_partition(self.root / PARTITION)
        code = PARTITION_CODES[split]
        ids = []
        for idx, orig_file in _read_mapping(self.root / MAPPING):
            if orig_file not in partition:
                raise DatasetNotFoundError(
                    f"{self.root / PARTITION} has no entry for {orig_file} (CelebA-HQ image "
                    f"{idx}); use CelebA's original list_eval_partition.txt"
                )
            if partition[orig_file] == code:
                ids.append(idx)
        return ids

    def part_path(self, sample_id: str, part: str) -> Path:
        n = int(sample_id)
        return self.root / PARTS / str(n // 2000) / f"{n:05d}_{part}.png"

    def raw_files(self, sample_id: str) -> list[Path]:
        return [self.root / IMAGES / f"{sample_id}.jpg",
                self.part_path(sample_id, "*").parent]

    def source_files(self, sample_id: str) -> list[Path]:
        parts = [self.part_path(sample_id, part) for part in CELEBAMASK.class_names[1:]]
        return [self.root / IMAGES / f"{sample_id}.jpg", *(p for p in parts if p.is_file())]

    def load_raw(self, sample_id: str) -> tuple[np.ndarray, np.ndarray]:
        mask: np.ndarray | None = None
        for label, part in enumerate(CELEBAMASK.class_names[1:], start=1):
            path = self.part_path(sample_id, part)
            if not path.is_file():
                continue
            region = read_part_mask(path)
            if mask is None:
                mask = np.zeros(region.shape, np.uint8)
            elif region.shape != mask.shape:
                raise BadSampleError(f"part mask is {region.shape}, other parts {mask.shape}: "
                                     f"{path}")
            mask[region] = label
        if mask is None:
            folder = self.part_path(sample_id, "*").parent
            raise BadSampleError(f"no part masks for image {sample_id} in {folder}")
        image = read_image_for_mask(self.root / IMAGES / f"{sample_id}.jpg", mask.shape,
                                    self.exif_orientation)
        return image, mask


def _read_partition(path: Path) -> dict[str, str]:
    """CelebA's ``list_eval_partition.txt``: ``000001.jpg 0`` per line, no header."""
    rows = (line.split() for line in path.read_text().splitlines())
    return {row[0]: row[1] for row in rows if len(row) == 2}


def _read_mapping(path: Path) -> list[tuple[str, str]]:
    """(CelebA-HQ id, CelebA file name) rows; the header and blank lines are skipped."""
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(row[0], row[2]) for row in rows if len(row) == 3 and row[0].isdigit()]
