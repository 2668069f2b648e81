"""Dataset readers on fixtures in each dataset's distributed layout: splits, merged and
mapped labels, flips through the real train path, and the configs that select them."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from fixtures_data import CELEBA_SPLITS, LAPA_SIZES

from faceparse.data.readers.celebamask import CelebAMaskHQ
from faceparse.data.readers.facesynthetics import FaceSynthetics, split_of
from faceparse.data.readers.folder import ImageMaskFolder, hash_split
from faceparse.data.readers.helen import Helen
from faceparse.data.readers.lapa import LaPa
from faceparse.data.transforms import train_transform
from faceparse.labels import IGNORE_INDEX, get_scheme
from faceparse.metrics import scores_from_confusion

pytestmark = pytest.mark.usefixtures("torch_single_thread")

READERS = {
    "celebamask": (CelebAMaskHQ, {}),
    "lapa": (LaPa, {}),
    "facesynthetics": (FaceSynthetics, {}),
    "helen": (Helen, {}),
    "helen_smith": (Helen, {}),
    "folder": (ImageMaskFolder, {"scheme": "facesynthetics",
                                 "fractions": {"val": 0.2, "test": 0.2}}),
}


def open_reader(dataset_copies, name: str, split: str, **kwargs):
    cls, defaults = READERS[name]
    root, _ = dataset_copies[name]
    return cls(split=split, root=root, **{"labels": cls_native(name), **defaults, **kwargs})


def cls_native(name: str) -> str:
    return "facesynthetics" if name == "folder" else READERS[name][0].native_scheme.name


@pytest.mark.parametrize("name", list(READERS))
def test_reader_returns_the_masks_on_disk(dataset_copies, name: str) -> None:
    _, expected = dataset_copies[name]
    seen = {}
    for split in ("train", "val", "test"):
        ds = open_reader(dataset_copies, name, split)
        assert len(ds) > 0
        for i in range(len(ds)):
            sample = ds[i]
            image, mask = sample["image"], sample["mask"]
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            assert image.shape[:2] == mask.shape
            np.testing.assert_array_equal(mask, expected[ds.ids[i]])
            seen.setdefault(ds.ids[i], split)
    assert set(seen) == set(expected)


def test_celebamask_official_split_and_image_resized_to_mask(dataset_copies) -> None:
    for split in ("train", "val", "test"):
        ds = open_reader(dataset_copies, "celebamask", split)
        assert sorted(map(int, ds.ids)) == sorted(k for k, s in CELEBA_SPLITS.items()
                                                  if s == split)
        image, mask = ds.load_checked(0)
        assert image.shape == (64, 64, 3) and mask.shape == (64, 64)  # the 128 px image shrinks


@pytest.mark.parametrize(("sample", "under", "over"), [
    ("0", "skin", "l_eye"), ("0", "skin", "r_eye"), ("0", "skin", "u_lip"),
    ("0", "l_eye", "eye_g"), ("0", "r_eye", "eye_g"), ("1", "hair", "hat"),
])
def test_celebamask_merge_order_later_parts_win(dataset_copies, sample: str, under: str,
                                                over: str) -> None:
    """Part masks overlap (skin under the eyes, an eye under the glasses, hair under a hat):
    in BiSeNet's order the part painted later wins, so another order fails here."""
    from faceparse.data.io import read_part_mask

    root, expected = dataset_copies["celebamask"]
    ds = CelebAMaskHQ("train", root, labels="celebamask", transform=None)
    _, mask = ds.load_raw(sample)
    scheme = get_scheme("celebamask")
    won = mask == scheme.index(over)
    covered = read_part_mask(ds.part_path(sample, under))
    assert (won & covered).sum() >= 4  # the overlap exists, and the later part wins it
    assert scheme.index(over) > scheme.index(under)
    np.testing.assert_array_equal(mask, expected[sample])


def test_other_splits_follow_their_rules(dataset_copies, caplog) -> None:
    for split, sizes in LAPA_SIZES.items():
        assert len(open_reader(dataset_copies, "lapa", split)) == len(sizes)
    for split in ("train", "val", "test"):
        ds = open_reader(dataset_copies, "facesynthetics", split)
        assert all(split_of(int(i)) == split for i in ds.ids)
        folder = open_reader(dataset_copies, "folder", split)
        assert all(hash_split(i, {"val": 0.2, "test": 0.2}) == split for i in folder.ids)
    with caplog.at_level(logging.WARNING, logger="faceparse.data.readers.helen"):
        assert open_reader(dataset_copies, "helen", "val").ids == open_reader(
            dataset_copies, "helen", "test").ids  # HELEN* has no validation set
    said = [r.getMessage() for r in caplog.records if r.name.endswith("helen")]
    assert len(said) == 1 and "val reads" in said[0] and "chosen on the test set" in said[0]
    caplog.clear()
    assert [len(open_reader(dataset_copies, "helen_smith", s)) for s in ("train", "val", "test")
            ] == [3, 2, 2]
    assert "chosen on the test set" not in caplog.text  # the Smith release has its own val


def test_folder_name_rule_and_split_folders(tmp_path) -> None:
    import fixtures_data as fx

    expected = fx.write_folder(tmp_path / "copy" / "train", 4, "segmentations", "{stem}_seg.png")
    fx.write_folder(tmp_path / "copy" / "val", 2, "segmentations", "{stem}_seg.png")
    ds = ImageMaskFolder("train", tmp_path / "copy", labels="ourface", transform=None,
                         scheme="facesynthetics", mask_dir="segmentations",
                         mask_name="{stem}_seg.png")
    assert ds.ids == sorted(expected)
    assert len(ImageMaskFolder("val", tmp_path / "copy", scheme="facesynthetics",
                               mask_dir="segmentations", mask_name="{stem}_seg.png")) == 2


@pytest.mark.parametrize("name", list(READERS))
@pytest.mark.parametrize("labels", ["ourface", "native"])
def test_train_path_labels_stay_in_scheme(dataset_copies, name: str, labels: str) -> None:
    scheme = get_scheme(cls_native(name) if labels == "native" else labels)
    ds = open_reader(dataset_copies, name, "train", labels=scheme.name,
                     transform=train_transform(64, scheme, scale=(0.6, 1.4), rotate=30))
    allowed = set(range(scheme.num_classes)) | {IGNORE_INDEX}
    for seed in range(3):
        ds.transform.set_random_seed(seed)
        for i in range(len(ds)):
            mask = ds[i]["mask"]
            assert isinstance(mask, torch.Tensor) and mask.dtype == torch.uint8
            assert set(mask.unique().tolist()) <= allowed


def centre_x(mask: np.ndarray, label: int) -> float:
    return float(np.argwhere(mask == label)[:, 1].mean())


def test_flipped_left_eye_is_labelled_left_eye(dataset_copies) -> None:
    """CelebAMask-HQ, native 19 classes, through the dataset and the train transform.

    The subject's left eye appears on the image's right. After a horizontal flip the eye
    on the image's right is the other eye, which is now the subject's left eye: it must
    carry the l_eye id, and the l_eye region must be the mirror of the old r_eye region.
    """
    scheme = get_scheme("celebamask")
    l_eye, r_eye = scheme.index("l_eye"), scheme.index("r_eye")
    plain = CelebAMaskHQ("train", dataset_copies["celebamask"][0], labels="celebamask")
    flip = train_transform(64, scheme, scale=(1, 1), rotate=0, translate=0, hflip=1.0,
                           color_jitter=0, blur_noise=0)
    flipped = CelebAMaskHQ("train", dataset_copies["celebamask"][0], labels="celebamask",
                           transform=flip)
    checked = 0
    for i in range(len(plain)):
        before = plain[i]["mask"]
        if not ((before == l_eye).any() and (before == r_eye).any()):
            continue
        after = flipped[i]["mask"].numpy()
        assert centre_x(before, l_eye) > centre_x(before, r_eye)  # left eye on image right
        assert centre_x(after, l_eye) > centre_x(after, r_eye)  # still so after the flip
        np.testing.assert_array_equal(after == l_eye, before[:, ::-1] == r_eye)
        checked += 1
    assert checked >= 2


def test_beard_never_labelled_is_left_out_of_the_mean(dataset_copies) -> None:
    """CelebAMask-HQ labels beards as skin: in ourface the beard id never occurs, and a
    prediction of beard does not pull the mean F1 down as a zero score would."""
    ds = open_reader(dataset_copies, "celebamask", "test", labels="ourface")
    beard = get_scheme("ourface").index("beard")
    masks = [torch.as_tensor(ds[i]["mask"]).long() for i in range(len(ds))]
    assert all((m != beard).all() for m in masks)
    target = torch.cat([m.flatten() for m in masks])
    pred = target.clone()
    pred[:50] = beard  # a few wrong beard pixels
    confusion = torch.bincount(target * 11 + pred, minlength=121).reshape(11, 11)
    scores = scores_from_confusion(confusion)
    assert not scores["present"][beard]
    present_fg = scores["present"].clone()
    present_fg[0] = False
    assert scores["f1_mean"] == pytest.approx(scores["f1"][present_fg].mean().item())
    assert scores["f1_mean"] > 0.9


@pytest.mark.parametrize("name", ["celebamask", "lapa", "facesynthetics", "helen", "folder"])
def test_data_config_builds_loaders(compose, dataset_copies, name: str) -> None:
    from hydra.utils import instantiate

    root = dataset_copies[name][0]
    cfg = compose([f"data={name}", f"data.root={root}", "data.image_size=32",
                   "data.batch_size=2", "data.num_workers=0"]
                  + (["data.dataset.scheme=facesynthetics"] if name == "folder" else []))
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["mask"].shape == (2, 32, 32)
    assert int(batch["mask"][batch["mask"] != IGNORE_INDEX].max()) < 11  # ourface ids
