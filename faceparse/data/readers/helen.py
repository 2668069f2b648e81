"""Helen face parsing (11 classes), in either of its two common releases.

- HELEN* (``helenstar_release`` of Lin et al., "Face Parsing with RoI Tanh-Warping",
  CVPR 2019; https://github.com/JPlin/Relabeled-HELEN-Dataset), the relabelled version
  recent papers (SegFace, FaRL) report on: ``train/`` (2,000) and ``test/`` (100) with
  ``<name>_image.jpg`` + ``<name>_label.png``. It has no validation set: ``val`` reads
  ``test/``, as those papers do, so a checkpoint chosen on it is chosen on the test set.
- The original release (Smith et al., "Exemplar-Based Face Parsing", CVPR 2013, on the
  Helen images of Le et al. 2012): ``images/<name>.jpg`` and eleven soft label maps
  ``labels/<name>/<name>_lbl00..10.png`` whose per-pixel argmax is the label, split by
  ``exemplars.txt`` (2,000 train), ``tuning.txt`` (230 val), ``testing.txt`` (100 test).

The release is recognised from the files under ``data.root``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from faceparse.data.io import BadSampleError, read_mask
from faceparse.data.orientation import read_image_for_mask
from faceparse.data.readers.files import PairedFileDataset
from faceparse.labels import HELEN

__all__ = ["Helen"]

log = logging.getLogger(__name__)

STAR_FOLDERS = {"train": "train", "val": "test", "test": "test"}
SMITH_LISTS = {"train": "exemplars.txt", "val": "tuning.txt", "test": "testing.txt"}


class Helen(PairedFileDataset):
    """Helen in the HELEN* layout, or the original Smith et al. layout."""

    native_scheme = HELEN
    title = "Helen"
    layout = """\
  HELEN* (helenstar_release, https://github.com/JPlin/Relabeled-HELEN-Dataset):
    train/<name>_image.jpg, train/<name>_label.png (ids 0-10), test/... likewise
  or the original release (Smith et al. 2013, http://www.ifp.illinois.edu/~vuongle2/helen/
  images with the face-parsing labels of Smith et al.):
    images/<name>.jpg, labels/<name>/<name>_lbl00.png .. _lbl10.png,
    exemplars.txt, tuning.txt, testing.txt (lines '<n> , <name>')
Pass the folder holding either as data.root=<folder>."""

    def list_raw(self, split: str) -> list[str]:
        if (self.root / SMITH_LISTS[split]).is_file():
            return self._list_smith(split)
        if not (self.root / "train").is_dir() and (self.root / "helenstar_release").is_dir():
            self.root = self.root / "helenstar_release"
        folder = STAR_FOLDERS[split]
        self.require(folder)
        if split == "val":
            log.warning("HELEN* has no validation set: split val reads %s, so the checkpoint "
                        "kept by val/ scores (and a sweep's best) is chosen on the test set; "
                        "the original Smith et al. release has one (tuning.txt)",
                        self.root / folder)
        return self.pair_up(
            (p.name[: -len("_image.jpg")], p, p.with_name(p.name.replace("_image.jpg",
                                                                         "_label.png")))
            for p in sorted((self.root / folder).glob("*_image.jpg"))
        )

    def _list_smith(self, split: str) -> list[str]:
        self.require("images", "labels")
        rows = (line.split(",") for line in (self.root / SMITH_LISTS[split]).read_text()
                .splitlines())
        names = [row[1].strip() for row in rows if len(row) == 2 and row[1].strip()]
        self.pairs = {n: (self.root / "images" / f"{n}.jpg", self.root / "labels" / n)
                      for n in names}
        return names

    def load_raw(self, sample_id: str) -> tuple[np.ndarray, np.ndarray]:
        image_path, label_path = self.pairs[sample_id]
        if not label_path.is_dir():
            return super().load_raw(sample_id)
        maps = [read_mask(p) for p in self._soft_maps(sample_id)]
        if len({m.shape for m in maps}) != 1:
            raise BadSampleError(f"label maps of different sizes in {label_path}")
        image = read_image_for_mask(image_path, maps[0].shape[:2], self.exif_orientation)
        return image, np.argmax(np.stack(maps), axis=0).astype(np.uint8)

    def source_files(self, sample_id: str) -> list[Path]:
        """The image and, for the original release, each soft map in its label folder (a
        map rewritten in place leaves the folder's own time as it was)."""
        image_path, label_path = self.pairs[sample_id]
        if not label_path.is_dir():
            return super().source_files(sample_id)
        return [image_path, *sorted(label_path.glob(f"{sample_id}_lbl*.png"))]

    def _soft_maps(self, sample_id: str) -> list[Path]:
        folder = self.pairs[sample_id][1]
        paths = [folder / f"{sample_id}_lbl{c:02d}.png" for c in range(HELEN.num_classes)]
        absent = [p.name for p in paths if not p.is_file()]
        if absent:
            raise BadSampleError(f"missing label maps {absent} in {folder}")
        return paths
