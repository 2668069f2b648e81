"""Write small copies of each dataset in its exact on-disk layout, drawn by ``render_face``.

File and folder names, label encodings and split files follow the real downloads
(DESIGN.md section 6); only the image count and size are small. Each writer returns the
native masks it wrote, keyed by sample id, so tests compare what a reader returns with
what is on disk.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from faceparse.data.readers.facesynthetics import split_of
from faceparse.data.synthetic import render_face, render_face_with_landmarks
from faceparse.labels import CELEBAMASK, FACESYNTHETICS, LAPA, LabelScheme

# FaceSynthetics class -> the class of the same thing in each native scheme (absent: background).
_FS_TO_CELEBA = {
    "skin": "skin", "nose": "nose", "right_eye": "r_eye", "left_eye": "l_eye",
    "right_brow": "r_brow", "left_brow": "l_brow", "right_ear": "r_ear", "left_ear": "l_ear",
    "mouth_interior": "mouth", "top_lip": "u_lip", "bottom_lip": "l_lip", "neck": "neck",
    "hair": "hair", "beard": "skin", "clothing": "cloth", "glasses": "eye_g",
    "headwear": "hat", "facewear": "skin",
}
_FS_TO_LAPA = {
    "skin": "skin", "nose": "nose", "right_eye": "right_eye", "left_eye": "left_eye",
    "right_brow": "right_brow", "left_brow": "left_brow", "mouth_interior": "inner_mouth",
    "top_lip": "upper_lip", "bottom_lip": "lower_lip", "hair": "hair", "beard": "skin",
    "facewear": "skin",
}
# Parts that CelebAMask-HQ's skin annotation covers too: merging must let them win.
_UNDER_SKIN = ("nose", "l_eye", "r_eye", "l_brow", "r_brow", "mouth", "u_lip", "l_lip")
# Overlaps whose winner depends on the merge order, as in the real annotations: hair runs
# under a hat, and each eye's mask runs under the glasses on its side. BiSeNet's order
# paints hat after hair and eye_g after the eyes, so the hat and the glasses win.
_UNDER = {"hair": ("hat",), "l_eye": ("eye_g",), "r_eye": ("eye_g",)}
# Faces rendered for some ids, so that the fixture has glasses (0) and a hat (1).
_CELEBA_RENDER = {0: 12, 1: 10}


def fs_lut(target: LabelScheme, names: dict[str, str]) -> np.ndarray:
    lut = np.zeros(256, np.uint8)
    for i, name in enumerate(FACESYNTHETICS.class_names):
        lut[i] = target.index(names[name]) if name in names else 0
    return lut


def face(index: int, size: int, scheme: LabelScheme, names: dict[str, str],
         seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    image, mask = render_face(seed, index, size)
    return image, fs_lut(scheme, names)[mask]


def write_rgb(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def write_gray(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), mask)


CELEBA_SPLITS = {0: "train", 1: "train", 2: "val", 2000: "train", 2001: "test", 4001: "train",
                 29999: "val", 6002: "test"}


def write_celebamask(root: Path, splits: dict[int, str] = CELEBA_SPLITS, mask_size: int = 64,
                     image_size: int = 128) -> dict[str, np.ndarray]:
    """CelebA-HQ-img/<id>.jpg, mask-anno/<id//2000>/<id:05d>_<part>.png (RGB, white
    foreground), the HQ-to-CelebA mapping and CelebA's partition file."""
    codes = {"train": 0, "val": 1, "test": 2}
    expected, mapping, partition = {}, ["idx orig_idx orig_file"], []
    for hq in sorted(splits):
        image, native = face(_CELEBA_RENDER.get(hq, hq), image_size, CELEBAMASK, _FS_TO_CELEBA)
        native = native[:: image_size // mask_size, :: image_size // mask_size]
        write_rgb(root / "CelebA-HQ-img" / f"{hq}.jpg", image)
        for label, part in enumerate(CELEBAMASK.class_names[1:], start=1):
            region = native == label
            if part == "skin":
                region |= np.isin(native, [CELEBAMASK.index(p) for p in _UNDER_SKIN])
            for under in _UNDER.get(part, ()):
                region |= (native == CELEBAMASK.index(under)) & _side_of(native, part)
            if region.any():
                white = np.repeat(region[..., None], 3, axis=2).astype(np.uint8) * 255
                write_rgb(root / "CelebAMask-HQ-mask-anno" / str(hq // 2000)
                          / f"{hq:05d}_{part}.png", white)
        orig = 100_000 + 7 * hq
        mapping.append(f"{hq:<5d}  {orig:<6d}  {orig + 1:06d}.jpg")
        partition.append(f"{orig + 1:06d}.jpg {codes[splits[hq]]}")
        expected[str(hq)] = native
    partition += [f"{i:06d}.jpg {i % 3}" for i in range(1, 30)]  # faces not in CelebA-HQ
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(mapping) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(sorted(partition)) + "\n")
    return expected


def _side_of(native: np.ndarray, part: str) -> np.ndarray:
    """Columns on the side of the face where ``part`` is (everywhere for unsided parts)."""
    columns = np.arange(native.shape[1])[None, :]
    if part not in ("l_eye", "r_eye"):
        return np.ones_like(native, bool)
    eyes = {p: np.nonzero(native == CELEBAMASK.index(p))[1].mean() for p in ("l_eye", "r_eye")}
    middle = (eyes["l_eye"] + eyes["r_eye"]) / 2
    return (columns < middle) == (eyes[part] < middle)


LAPA_SIZES = {"train": [(64, 64), (72, 56), (64, 80)], "val": [(64, 64), (48, 64)],
              "test": [(64, 64), (56, 72)]}


def write_lapa(root: Path) -> dict[str, np.ndarray]:
    """<split>/images/<name>.jpg, labels/<name>.png (0-10), landmarks/<name>.txt (106 points)."""
    expected = {}
    for s, sizes in LAPA_SIZES.items():
        for k, (h, w) in enumerate(sizes):
            name = f"{1000 + 10 * k + len(s)}_{s}"
            image, native = face(k + 50 * len(s), 96, LAPA, _FS_TO_LAPA)
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
            native = cv2.resize(native, (w, h), interpolation=cv2.INTER_NEAREST)
            write_rgb(root / s / "images" / f"{name}.jpg", image)
            write_gray(root / s / "labels" / f"{name}.png", native)
            points = np.random.default_rng(k).uniform(0, min(h, w), (106, 2))
            (root / s / "landmarks").mkdir(parents=True, exist_ok=True)
            (root / s / "landmarks" / f"{name}.txt").write_text(
                "106\n" + "".join(f"{x:.2f} {y:.2f}\n" for x, y in points))
            expected[name] = native
    return expected


def write_helenstar(root: Path, counts: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """helenstar_release/{train,test,test_resize}/<name>_{image.jpg,label.png,viz.jpg}."""
    expected = {}
    for folder, count in (counts or {"train": 3, "test": 2, "test_resize": 2}).items():
        for k in range(count):
            name = f"{100040 + k}_{len(folder)}"
            image, native = face(200 + k + 10 * len(folder), 64, LAPA, _FS_TO_LAPA)
            base = root / "helenstar_release" / folder
            write_rgb(base / f"{name}_image.jpg", image)
            write_gray(base / f"{name}_label.png", native)
            write_rgb(base / f"{name}_viz.jpg", image // 2)
            if folder != "test_resize":
                expected[name] = native
    return expected


def write_helen_smith(root: Path) -> dict[str, np.ndarray]:
    """images/<name>.jpg, labels/<name>/<name>_lbl00..10.png soft maps, split lists."""
    expected = {}
    for listing, count in (("exemplars.txt", 3), ("tuning.txt", 2), ("testing.txt", 2)):
        lines = []
        for k in range(count):
            name = f"{2330000 + 100 * k + len(listing)}_1"
            image, native = face(300 + k + len(listing), 64, LAPA, _FS_TO_LAPA)
            write_rgb(root / "images" / f"{name}.jpg", image)
            noise = np.random.default_rng(k).integers(0, 150, (LAPA.num_classes, *native.shape))
            for c in range(LAPA.num_classes):  # soft maps whose argmax is the label
                soft = np.where(native == c, 200, noise[c]).astype(np.uint8)
                write_gray(root / "labels" / name / f"{name}_lbl{c:02d}.png", soft)
            lines.append(f"{k + 1} , {name}")
            expected[name] = native
        (root / listing).write_text("\n".join(lines) + "\n")
    return expected


def write_facesynthetics(root: Path, count: int = 40, size: int = 64) -> dict[str, np.ndarray]:
    """Flat {id:06d}.png, {id:06d}_seg.png, {id:06d}_ldmks.txt."""
    root.mkdir(parents=True, exist_ok=True)
    expected = {}
    for i in range(count):
        image, mask, ldmks = render_face_with_landmarks(0, i, size)
        write_rgb(root / f"{i:06d}.png", image)
        write_gray(root / f"{i:06d}_seg.png", mask)
        np.savetxt(root / f"{i:06d}_ldmks.txt", ldmks, fmt="%.3f")
        expected[f"{i:06d}"] = mask
    assert {split_of(i) for i in range(count)} == {"train", "val", "test"}
    return expected


def write_folder(root: Path, count: int = 30, mask_dir: str = "masks",
                 mask_name: str = "{stem}.png") -> dict[str, np.ndarray]:
    """images/<name>.png + <mask_dir>/<mask_name> in FaceSynthetics ids."""
    expected = {}
    for i in range(count):
        image, mask = render_face(7, i, 64)
        stem = f"photo_{i:03d}"
        write_rgb(root / "images" / f"{stem}.png", image)
        write_gray(root / mask_dir / mask_name.format(stem=stem), mask)
        expected[stem] = mask
    return expected
