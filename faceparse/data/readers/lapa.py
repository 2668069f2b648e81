"""LaPa (JD AI, 22,000 faces, 11 classes): one image, label PNG and landmark file per face."""

from __future__ import annotations

from faceparse.data.readers.files import PairedFileDataset
from faceparse.labels import LAPA

__all__ = ["LaPa"]


class LaPa(PairedFileDataset):
    """``data.root/<split>/{images,labels}``: about 18,000 / 2,000 / 2,000 faces.

    Landmarks are not read: the parser is trained on labels only.
    """

    native_scheme = LAPA
    title = "LaPa"
    layout = """\
  {train,val,test}/images/<name>.jpg      RGB, sizes vary
  {train,val,test}/labels/<name>.png      one channel, ids 0-10
  {train,val,test}/landmarks/<name>.txt   106 landmarks (not read)
Get LaPa from https://github.com/jd-opensource/lapa-dataset and pass the unpacked LaPa/
folder as data.root=<folder>."""

    def list_raw(self, split: str) -> list[str]:
        self.require(f"{split}/images", f"{split}/labels")
        folder = self.root / split
        return self.pair_up(
            (p.stem, p, folder / "labels" / f"{p.stem}.png")
            for p in sorted((folder / "images").glob("*.jpg"))
        )
