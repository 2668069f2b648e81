"""Label schemes and lookup tables against the tables of DESIGN.md section 3."""

from __future__ import annotations

import numpy as np
import pytest

from faceparse.labels import (
    IGNORE_INDEX,
    SCHEMES,
    LabelScheme,
    colorize,
    get_scheme,
    mapping_lut,
    remap,
)

NATIVE = [name for name in SCHEMES if name != "ourface"]
CELEBA_ORDERS = ("celebamask", "celebamask_official", "celebamask_farl")

# Written out by hand from DESIGN.md section 3: native id -> OurFaceLabel id.
EXPECTED_TO_OURFACE: dict[str, list[int]] = {
    # background skin nose r_eye l_eye r_brow l_brow r_ear l_ear mouth top bottom neck
    # hair beard clothing glasses headwear facewear
    "facesynthetics": [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 6, 7, 1, 8, 9, 0, 10, 10, 10],
    # background skin l_brow r_brow l_eye r_eye eye_g l_ear r_ear ear_r nose mouth u_lip
    # l_lip neck neck_l cloth hair hat
    "celebamask": [0, 1, 3, 3, 2, 2, 10, 4, 4, 10, 1, 5, 6, 7, 1, 10, 0, 8, 10],
    # background skin nose eye_g l_eye r_eye l_brow r_brow l_ear r_ear mouth u_lip l_lip
    # hair hat ear_r neck_l neck cloth
    "celebamask_official": [0, 1, 1, 10, 2, 2, 3, 3, 4, 4, 5, 6, 7, 8, 10, 10, 10, 1, 0],
    # background neck skin cloth l_ear r_ear l_brow r_brow l_eye r_eye nose mouth l_lip
    # u_lip hair eye_g hat ear_r neck_l
    "celebamask_farl": [0, 1, 1, 0, 4, 4, 3, 3, 2, 2, 1, 5, 7, 6, 8, 10, 10, 10, 10],
    # background skin l_brow r_brow l_eye r_eye nose upper_lip inner_mouth lower_lip hair
    "lapa": [0, 1, 3, 3, 2, 2, 1, 6, 5, 7, 8],
    "helen": [0, 1, 3, 3, 2, 2, 1, 6, 5, 7, 8],
    "ourface": list(range(11)),
}

# The left/right pairs a horizontal flip must swap (ids), and nothing else.
EXPECTED_FLIP_PAIRS: dict[str, set[frozenset[int]]] = {
    "ourface": set(),
    "facesynthetics": {frozenset(p) for p in ((3, 4), (5, 6), (7, 8))},
    "celebamask": {frozenset(p) for p in ((2, 3), (4, 5), (7, 8))},
    "celebamask_official": {frozenset(p) for p in ((4, 5), (6, 7), (8, 9))},
    "celebamask_farl": {frozenset(p) for p in ((4, 5), (6, 7), (8, 9))},
    "lapa": {frozenset(p) for p in ((2, 3), (4, 5))},
    "helen": {frozenset(p) for p in ((2, 3), (4, 5))},
}


def test_every_scheme_has_hand_written_expectations() -> None:
    assert set(SCHEMES) == set(EXPECTED_TO_OURFACE) == set(EXPECTED_FLIP_PAIRS)


def test_ourface_has_eleven_contiguous_classes_with_accessory_last() -> None:
    ourface = get_scheme("ourface")
    assert ourface.num_classes == 11
    assert ourface.index("background") == 0
    assert ourface.index("beard") == 9
    assert ourface.index("accessory") == 10
    assert not ourface.has_sides


@pytest.mark.parametrize(
    ("name", "num_classes"),
    [("facesynthetics", 19), ("celebamask", 19), ("celebamask_official", 19),
     ("celebamask_farl", 19), ("lapa", 11), ("helen", 11)],
)
def test_native_scheme_sizes(name: str, num_classes: int) -> None:
    scheme = get_scheme(name)
    assert scheme.num_classes == num_classes
    assert scheme.has_sides


@pytest.mark.parametrize("name", list(EXPECTED_TO_OURFACE))
def test_lut_to_ourface_matches_design_table(name: str) -> None:
    lut = mapping_lut(name, "ourface")
    expected = EXPECTED_TO_OURFACE[name]
    assert lut.dtype == np.uint8 and lut.shape == (256,)
    assert lut[: len(expected)].tolist() == expected
    # Ids beyond the scheme and the ignore id map to ignore.
    assert (lut[len(expected):] == IGNORE_INDEX).all()


@pytest.mark.parametrize(
    ("name", "class_name", "native_id", "ourface_id"),
    [
        ("facesynthetics", "nose", 2, 1),
        ("facesynthetics", "clothing", 15, 0),
        ("facesynthetics", "glasses", 16, 10),
        ("facesynthetics", "headwear", 17, 10),
        ("facesynthetics", "facewear", 18, 10),
        ("facesynthetics", "beard", 14, 9),
        ("celebamask", "eye_g", 6, 10),
        ("celebamask", "l_lip", 13, 7),
        ("celebamask", "u_lip", 12, 6),
        ("celebamask", "cloth", 16, 0),
        ("celebamask", "hair", 17, 8),
        ("lapa", "inner_mouth", 8, 5),
        ("lapa", "nose", 6, 1),
    ],
)
def test_named_ids_from_design(name: str, class_name: str, native_id: int, ourface_id: int) -> None:
    scheme = get_scheme(name)
    assert scheme.index(class_name) == native_id
    assert mapping_lut(name, "ourface")[native_id] == ourface_id


@pytest.mark.parametrize("name", NATIVE)
def test_every_native_id_maps_to_a_valid_ourface_id(name: str) -> None:
    scheme = get_scheme(name)
    lut = mapping_lut(scheme, "ourface")
    ids = lut[: scheme.num_classes]
    assert ids.max() < get_scheme("ourface").num_classes
    assert lut[IGNORE_INDEX] == IGNORE_INDEX


def test_celebamask_has_no_beard() -> None:
    """CelebAMask-HQ labels beards as skin: nothing may map to ourface beard (9)."""
    for name in CELEBA_ORDERS:
        assert 9 not in mapping_lut(name, "ourface")[:19]


@pytest.mark.parametrize("source", CELEBA_ORDERS)
@pytest.mark.parametrize("target", CELEBA_ORDERS)
def test_celebamask_orders_convert_by_name(source: str, target: str) -> None:
    src, dst = get_scheme(source), get_scheme(target)
    lut = mapping_lut(src, dst)
    for src_id, name in enumerate(src.class_names):
        assert dst.class_names[lut[src_id]] == name
    assert lut[IGNORE_INDEX] == IGNORE_INDEX
    # Round trip is the identity on every id, ignore included.
    back = mapping_lut(dst, src)
    mask = np.array([*range(src.num_classes), IGNORE_INDEX], dtype=np.uint8)
    assert np.array_equal(remap(remap(mask, lut), back), mask)


def test_celebamask_hair_and_lips_across_orders() -> None:
    to_official = mapping_lut("celebamask", "celebamask_official")
    official_to_farl = mapping_lut("celebamask_official", "celebamask_farl")
    # hair: BiSeNet 17 -> official 13 -> FaRL 14
    assert to_official[17] == 13
    assert official_to_farl[13] == 14
    # u_lip: 12 -> 11 -> 13; l_lip: 13 -> 12 -> 12; the lips swap order in FaRL.
    assert to_official[12] == 11 and official_to_farl[11] == 13
    assert to_official[13] == 12 and official_to_farl[12] == 12
    # neck: BiSeNet 14 -> official 17 -> FaRL 1
    assert to_official[14] == 17 and official_to_farl[17] == 1


def test_conversion_is_a_gather_not_chained_replacements() -> None:
    """BiSeNet -> FaRL moves many ids onto ids that are themselves sources."""
    src, dst = get_scheme("celebamask"), get_scheme("celebamask_farl")
    mask = np.arange(src.num_classes, dtype=np.uint8).reshape(1, -1).repeat(3, axis=0)
    out = remap(mask, mapping_lut(src, dst))
    assert [dst.class_names[i] for i in out[0]] == list(src.class_names)


def test_lapa_and_helen_convert_to_each_other_as_identity() -> None:
    lut = mapping_lut("lapa", "helen")
    assert lut[:11].tolist() == list(range(11))


@pytest.mark.parametrize(
    ("source", "target"),
    [("lapa", "facesynthetics"), ("facesynthetics", "celebamask"), ("celebamask", "lapa"),
     ("ourface", "celebamask")],
)
def test_unmappable_pair_raises_clear_value_error(source: str, target: str) -> None:
    with pytest.raises(ValueError, match="no mapping") as info:
        mapping_lut(source, target)
    assert repr(source) in str(info.value) and repr(target) in str(info.value)
    assert "ourface" in str(info.value)


def test_unknown_scheme_raises_key_error_listing_names() -> None:
    with pytest.raises(KeyError, match="celebamsk") as info:
        get_scheme("celebamsk")
    for name in SCHEMES:
        assert name in str(info.value)
    with pytest.raises(KeyError):
        mapping_lut("celebamsk", "ourface")


def test_get_scheme_passes_a_scheme_through() -> None:
    scheme = get_scheme("lapa")
    assert get_scheme(scheme) is scheme


def test_unknown_class_name_raises_key_error() -> None:
    with pytest.raises(KeyError, match="left_eye"):
        get_scheme("celebamask").index("left_eye")


def test_scheme_rejects_repeated_class_names() -> None:
    with pytest.raises(ValueError, match="repeats"):
        LabelScheme("bad", ("background", "skin", "skin"))


@pytest.mark.parametrize("name", list(SCHEMES))
def test_flip_lut_is_an_involution_swapping_exactly_the_sided_pairs(name: str) -> None:
    scheme = get_scheme(name)
    lut = scheme.flip_lut()
    assert lut.dtype == np.uint8 and lut.shape == (256,)
    assert np.array_equal(lut[lut], np.arange(256))
    moved = {frozenset((i, int(lut[i]))) for i in range(256) if lut[i] != i}
    assert moved == EXPECTED_FLIP_PAIRS[name]
    assert lut[IGNORE_INDEX] == IGNORE_INDEX


def _mirror(class_name: str) -> str:
    """The class a mirrored pixel belongs to, by the naming conventions of the datasets."""
    for a, b in (("left_", "right_"), ("right_", "left_"), ("l_", "r_"), ("r_", "l_")):
        # CelebAMask-HQ's l_lip is the *lower* lip, not a left part.
        if class_name.startswith(a) and class_name != "l_lip":
            return b + class_name.removeprefix(a)
    return class_name


@pytest.mark.parametrize("name", NATIVE)
def test_flip_swaps_left_and_right_by_name(name: str) -> None:
    scheme = get_scheme(name)
    lut = scheme.flip_lut()
    for i, class_name in enumerate(scheme.class_names):
        assert scheme.class_names[lut[i]] == _mirror(class_name), f"{name}: {class_name}"


@pytest.mark.parametrize("name", CELEBA_ORDERS)
def test_celebamask_lips_are_not_swapped(name: str) -> None:
    scheme = get_scheme(name)
    lut = scheme.flip_lut()
    for lip in ("l_lip", "u_lip", "mouth", "nose", "hair"):
        i = scheme.index(lip)
        assert lut[i] == i


def test_flip_commutes_with_mapping_to_ourface() -> None:
    """Flipping sides never changes the OurFaceLabel class of a pixel."""
    for name in NATIVE:
        scheme = get_scheme(name)
        to_ourface = mapping_lut(scheme, "ourface")
        assert np.array_equal(to_ourface[scheme.flip_lut()], to_ourface)


@pytest.mark.parametrize("name", list(SCHEMES))
def test_colorize_shape_dtype_and_colours(name: str, rng: np.random.Generator) -> None:
    scheme = get_scheme(name)
    mask = rng.integers(0, scheme.num_classes, size=(5, 7)).astype(np.uint8)
    mask[0, 0] = IGNORE_INDEX
    rgb = colorize(mask, name)
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (255, 255, 255)
    assert tuple(rgb[1, 1]) == tuple(scheme.palette[mask[1, 1]])
    # the lookup-table path (2-D uint8) equals indexing the palette; bgr flips the channels
    np.testing.assert_array_equal(rgb, scheme.palette_array()[mask])
    np.testing.assert_array_equal(colorize(mask, name, bgr=True), rgb[..., ::-1])
    np.testing.assert_array_equal(colorize(mask[None].astype(np.int64), name)[0], rgb)
    # Every class gets its own colour, so pictures can be read.
    colours = {tuple(c) for c in scheme.palette_array()[: scheme.num_classes]}
    assert len(colours) == scheme.num_classes
