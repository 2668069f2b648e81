"""The LightningDataModule: builds each split's dataset with its transform and loader."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from faceparse.data.transforms import eval_transform, train_transform
from faceparse.labels import get_scheme

__all__ = ["FaceDataModule", "seed_worker_transform"]


def seed_worker_transform(worker_id: int) -> None:
    """Give each loader worker its own reproducible augmentation stream.

    Albumentations keeps a private RNG that global seeding does not reach; torch's
    per-worker seed derives from the run's seed, so runs repeat and workers differ.
    """
    info = get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if transform is not None:
        transform.set_random_seed(info.seed % 2**32)


class FaceDataModule(L.LightningDataModule):
    """Datasets come from one factory called as ``dataset(split=, labels=, transform=)``.

    Args:
        dataset: a Hydra ``_partial_`` dataset class (synthetic, CelebAMask-HQ, ...).
        labels: target label scheme name; the model's ``num_classes`` derives from it.
        image_size: square training/evaluation size (a multiple of 16).
        augment: keyword arguments of :func:`faceparse.data.transforms.train_transform`.
    """

    def __init__(
        self,
        dataset: Callable[..., Dataset],
        labels: str = "ourface",
        image_size: int = 512,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        pin_memory: bool = True,
        augment: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if image_size % 16:
            raise ValueError(f"data.image_size must be a multiple of 16, got {image_size}")
        self.dataset_factory = dataset
        self.scheme = get_scheme(labels)
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.augment = dict(augment or {})
        self.datasets: dict[str, Dataset] = {}

    def make_dataset(self, split: str) -> Dataset:
        transform = (
            train_transform(self.image_size, self.scheme, **self.augment)
            if split == "train"
            else eval_transform(self.image_size)
        )
        # Main-process loading (num_workers=0) draws augmentations from this seed.
        transform.set_random_seed(int(torch.randint(2**31, ()).item()))
        return self.dataset_factory(split=split, labels=self.scheme.name, transform=transform)

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(
            stage or "", ("train", "val", "test")
        )
        for split in wanted:
            if split not in self.datasets:
                self.datasets[split] = self.make_dataset(split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle,
            drop_last=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            worker_init_fn=seed_worker_transform if self.num_workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
