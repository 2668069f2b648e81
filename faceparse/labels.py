"""Label schemes for face parsing and the lookup tables that convert between them.

Every dataset stores masks in its own numbering; mixing orders up is the most common
face-parser bug. Each order is therefore a named :class:`LabelScheme`, and conversions
are 256-entry lookup arrays (``lut[mask]``) built from class *names*, never chains of
in-place replacements that can clobber already-converted ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "IGNORE_INDEX",
    "LabelScheme",
    "SCHEMES",
    "get_scheme",
    "mapping_lut",
    "remap",
    "colorize",
]

IGNORE_INDEX = 255

# A fixed, well-separated colour list; schemes index into it by class id.
_BASE_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (204, 153, 102), (51, 51, 255), (255, 153, 51), (102, 204, 0),
    (255, 0, 255), (255, 80, 80), (170, 0, 51), (102, 51, 0), (0, 204, 204),
    (255, 255, 0), (0, 102, 0), (153, 0, 204), (0, 0, 153), (255, 204, 204),
    (102, 255, 178), (204, 0, 0), (128, 128, 128), (0, 128, 255), (255, 255, 255),
)


@dataclass(frozen=True)
class LabelScheme:
    """An ordered set of class names; the position of a name is its label id."""

    name: str
    class_names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...] = ()
    palette: tuple[tuple[int, int, int], ...] = field(default=_BASE_PALETTE, repr=False)

    def __post_init__(self) -> None:
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"scheme {self.name!r} repeats a class name")
        if len(self.palette) < self.num_classes:
            raise ValueError(f"scheme {self.name!r} needs {self.num_classes} palette colours")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_sides(self) -> bool:
        return bool(self.flip_pairs)

    def index(self, class_name: str) -> int:
        try:
            return self.class_names.index(class_name)
        except ValueError:
            raise KeyError(
                f"scheme {self.name!r} has no class {class_name!r}; classes: {self.class_names}"
            ) from None

    def flip_lut(self) -> np.ndarray:
        """Lookup that swaps left/right ids, for masks mirrored horizontally."""
        lut = np.arange(256, dtype=np.uint8)
        for left, right in self.flip_pairs:
            lut[left], lut[right] = right, left
        return lut

    def palette_array(self) -> np.ndarray:
        """(256, 3) uint8 colours; ids outside the scheme (255 = ignore) are white."""
        pal = np.full((256, 3), 255, dtype=np.uint8)
        pal[: self.num_classes] = np.asarray(self.palette[: self.num_classes], dtype=np.uint8)
        return pal


def _pairs(names: tuple[str, ...], *pairs: tuple[str, str]) -> tuple[tuple[int, int], ...]:
    return tuple((names.index(a), names.index(b)) for a, b in pairs)


OURFACE = LabelScheme(
    "ourface",
    (
        "background", "skin", "eyes", "eyebrows", "ears", "mouth_interior",
        "upper_lip", "lower_lip", "hair", "beard", "accessory",
    ),
    palette=(
        (0, 0, 0), (230, 180, 140), (40, 80, 255), (120, 60, 20), (255, 160, 0),
        (150, 0, 60), (255, 70, 110), (200, 0, 0), (90, 50, 160), (0, 150, 90),
        (0, 220, 220),
    ),
)

_FS_NAMES = (
    "background", "skin", "nose", "right_eye", "left_eye", "right_brow", "left_brow",
    "right_ear", "left_ear", "mouth_interior", "top_lip", "bottom_lip", "neck", "hair",
    "beard", "clothing", "glasses", "headwear", "facewear",
)
FACESYNTHETICS = LabelScheme(
    "facesynthetics",
    _FS_NAMES,
    _pairs(_FS_NAMES, ("left_eye", "right_eye"), ("left_brow", "right_brow"),
           ("left_ear", "right_ear")),
)


def _celeba_scheme(name: str, names: tuple[str, ...]) -> LabelScheme:
    pairs = _pairs(names, ("l_eye", "r_eye"), ("l_brow", "r_brow"), ("l_ear", "r_ear"))
    return LabelScheme(name, names, pairs)


# CelebAMask-HQ in face-parsing.PyTorch (BiSeNet) order: our default 19-class order.
CELEBAMASK = _celeba_scheme("celebamask", (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear",
    "ear_r", "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
))
# The order of CelebAMask-HQ's own preprocessing script.
CELEBAMASK_OFFICIAL = _celeba_scheme("celebamask_official", (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear",
    "r_ear", "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
))
# The order used by FaRL and SegFace.
CELEBAMASK_FARL = _celeba_scheme("celebamask_farl", (
    "background", "neck", "skin", "cloth", "l_ear", "r_ear", "l_brow", "r_brow", "l_eye",
    "r_eye", "nose", "mouth", "l_lip", "u_lip", "hair", "eye_g", "hat", "ear_r", "neck_l",
))

_LAPA_NAMES = (
    "background", "skin", "left_brow", "right_brow", "left_eye", "right_eye", "nose",
    "upper_lip", "inner_mouth", "lower_lip", "hair",
)
LAPA = LabelScheme(
    "lapa", _LAPA_NAMES,
    _pairs(_LAPA_NAMES, ("left_brow", "right_brow"), ("left_eye", "right_eye")),
)
HELEN = LabelScheme("helen", _LAPA_NAMES, LAPA.flip_pairs)

SCHEMES: dict[str, LabelScheme] = {
    s.name: s
    for s in (OURFACE, FACESYNTHETICS, CELEBAMASK, CELEBAMASK_OFFICIAL, CELEBAMASK_FARL,
              LAPA, HELEN)
}

# Every native class name, in any scheme, and the OurFaceLabel class it becomes.
_TO_OURFACE: dict[str, str] = {
    **{n: "background" for n in ("background", "cloth", "clothing")},
    **{n: "skin" for n in ("skin", "nose", "neck")},
    **{n: "eyes" for n in ("l_eye", "r_eye", "left_eye", "right_eye")},
    **{n: "eyebrows" for n in ("l_brow", "r_brow", "left_brow", "right_brow")},
    **{n: "ears" for n in ("l_ear", "r_ear", "left_ear", "right_ear")},
    **{n: "mouth_interior" for n in ("mouth", "mouth_interior", "inner_mouth")},
    **{n: "upper_lip" for n in ("u_lip", "top_lip", "upper_lip")},
    **{n: "lower_lip" for n in ("l_lip", "bottom_lip", "lower_lip")},
    "hair": "hair",
    "beard": "beard",
    **{n: "accessory" for n in ("eye_g", "ear_r", "neck_l", "hat", "glasses", "headwear",
                                "facewear")},
}


def get_scheme(name: str | LabelScheme) -> LabelScheme:
    """Look a scheme up by name, with the list of valid names on a typo."""
    if isinstance(name, LabelScheme):
        return name
    try:
        return SCHEMES[name]
    except KeyError:
        raise KeyError(f"unknown label scheme {name!r}; choose one of {sorted(SCHEMES)}") from None


def mapping_lut(source: str | LabelScheme, target: str | LabelScheme) -> np.ndarray:
    """A (256,) uint8 array with ``lut[source_id] == target_id``; 255 and unknown ids -> 255.

    Any scheme maps to ``ourface``; schemes with the same class names (the three
    CelebAMask-HQ orders, LaPa/Helen) map to each other by name.
    """
    src, dst = get_scheme(source), get_scheme(target)
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    if dst.name == OURFACE.name:
        targets = [_TO_OURFACE.get(n, n) for n in src.class_names]
    elif set(src.class_names) == set(dst.class_names):
        targets = list(src.class_names)
    else:
        raise ValueError(
            f"no mapping from label scheme {src.name!r} to {dst.name!r}: they name different "
            f"classes; map to 'ourface' or to the dataset's native scheme instead"
        )
    for src_id, name in enumerate(targets):
        lut[src_id] = dst.index(name)
    return lut


def remap(mask: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Apply a lookup table to a uint8 label map (one vectorised gather)."""
    return lut[mask]


def colorize(mask: np.ndarray, scheme: str | LabelScheme, bgr: bool = False) -> np.ndarray:
    """Render a label map as an RGB (``bgr``: OpenCV's order) image with the scheme's palette."""
    palette = get_scheme(scheme).palette_array()
    if bgr:
        palette = palette[:, ::-1]
    if mask.dtype == np.uint8 and mask.ndim == 2 and mask.size:
        import cv2  # a 256-entry lookup table: ~3x faster than np.take for a (H, W) map

        grey = cv2.cvtColor(np.ascontiguousarray(mask), cv2.COLOR_GRAY2BGR)
        return cv2.LUT(grey, np.ascontiguousarray(palette[:, None]))
    # np.take is ~4x faster than fancy indexing for an index into a (256, 3) table
    return np.take(palette, mask, axis=0)
