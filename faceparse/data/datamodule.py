"""The LightningDataModule: builds each split's dataset with its transform and loader."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, Dataset

from faceparse.data.loaders import (
    SkipReportingLoader,
    eval_sampler,
    rank_seed,
    seed_worker_transform,
    single_thread_opencv,
)
from faceparse.data.readers.prepared import refuse_other_size
from faceparse.data.transforms import eval_transform, seed_transform, train_transform
from faceparse.labels import get_scheme
from faceparse.option_values import boolean

__all__ = ["FaceDataModule"]


class FaceDataModule(L.LightningDataModule):
    """Datasets come from one factory called as ``dataset(split=, labels=, transform=)``.

    Args:
        dataset: a Hydra ``_partial_`` dataset class (synthetic, CelebAMask-HQ, ...).
        labels: target label scheme name; the model's ``num_classes`` derives from it.
        image_size: square training/evaluation size; a multiple of the encoder's coarsest
            stride (16 for every encoder here), which the net checks on its first batch.
        augment: keyword arguments of :func:`faceparse.data.transforms.train_transform`.
        root: where the dataset lives on disk (``data.root``), passed to the dataset;
            ``None`` for datasets that need no files.
        prefetch_factor: batches each worker loads ahead (``None``: PyTorch's 2); raise
            it when decoding time varies a lot between batches.
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
        root: str | None = None,
        prefetch_factor: int | None = None,
    ) -> None:
        super().__init__()
        boolean("data.pin_memory", pin_memory)
        for name, size in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if size is not None and (not isinstance(size, int) or size <= 0):
                raise ValueError(f"data.{name}={size}: a batch holds a positive whole number "
                                 "of samples, e.g. data.batch_size=8")
        self.dataset_factory = dataset
        self.scheme = get_scheme(labels)
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.augment = dict(augment or {})
        self.root = root
        self.prefetch_factor = prefetch_factor
        self.datasets: dict[str, Dataset] = {}

    def _rank(self) -> int:
        """This process's DDP rank: the trainer's, or before one is attached (``train``
        opens the splits before ``fit``) the launcher's, which Lightning reads from the
        environment; 0 in a one-process run."""
        trainer = getattr(self, "trainer", None)
        return int(trainer.global_rank) if trainer is not None else int(rank_zero_only.rank)

    def make_dataset(self, split: str) -> Dataset:
        transform = (
            train_transform(self.image_size, self.scheme, **self.augment)
            if split == "train"
            else eval_transform(self.image_size)
        )
        # Main-process loading (num_workers=0) draws augmentations from this seed.
        seed_transform(transform, rank_seed(int(torch.randint(2**31, ()).item()), self._rank()))
        return self.open_dataset(split, transform)

    def open_dataset(self, split: str, transform: Callable[..., dict] | None = None,
                     image_size: int | None = None, **overrides: Any) -> Dataset:
        """The split's dataset; ``prepare`` and ``stats`` call it without a transform.

        A prepared copy it would read must hold ``image_size`` (default
        ``data.image_size``) images.
        """
        kwargs: dict[str, Any] = {"split": split, "labels": self.scheme.name,
                                  "transform": transform}
        if self.root is not None:
            kwargs["root"] = Path(self.root)
        dataset = self.dataset_factory(**{**kwargs, **overrides})
        prepared = getattr(dataset, "prepared", None)
        if prepared is not None:
            refuse_other_size(prepared, image_size or self.image_size)
        return dataset

    def state_dict(self) -> dict[str, Any]:
        """Augmentation RNG states per split, saved in checkpoints so a resumed run draws
        the same augmentations (exact with ``num_workers=0``; workers keep their own)."""
        return {
            split: {
                "numpy": ds.transform.random_generator.bit_generator.state,
                "python": ds.transform.py_random.getstate(),
            }
            for split, ds in self.datasets.items()
            if hasattr(getattr(ds, "transform", None), "random_generator")
        }

    def seed_augmentation(self, split: str, seed: int) -> None:
        """Restart ``split``'s augmentation stream (in this process; loader workers seed
        their own) from ``seed``: under DDP every training epoch does, per rank."""
        transform = getattr(self.datasets.get(split), "transform", None)
        if transform is not None:
            seed_transform(transform, seed)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for split, rng in state_dict.items():
            transform = self.datasets[split].transform if split in self.datasets else None
            if transform is not None:
                transform.random_generator.bit_generator.state = rng["numpy"]
                transform.py_random.setstate(rng["python"])

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(
            stage or "", ("train", "val", "test")
        )
        self.open_splits(wanted)

    def open_splits(self, splits: Sequence[str], world_size: int | None = None) -> None:
        """Open ``splits`` (those not open yet); a train split that fills no batch over
        ``world_size`` processes (default: the trainer's) is refused. ``train`` calls it
        before the run starts, so missing data or a bad augmentation value is refused before
        there is a run; ``setup`` then takes them as they are."""
        for split in splits:
            if split not in self.datasets:
                self.datasets[split] = self.make_dataset(split)
        if "train" in splits:
            self.refuse_empty_epoch(world_size)

    def refuse_empty_epoch(self, world_size: int | None = None) -> None:
        """Refuse a train split that fills no batch: training drops the last partial batch,
        so the run would take no step and then test its initial weights."""
        world = max(1, int(world_size or getattr(self.trainer, "world_size", 1) or 1))
        samples = len(self.datasets["train"])
        if math.ceil(samples / world) < self.batch_size:
            where = f" over {world} processes" if world > 1 else ""
            raise ValueError(
                f"the train split has {samples} samples{where}, fewer than one batch "
                f"(data.batch_size={self.batch_size}): no training step would run. Lower "
                f"data.batch_size, or add training images")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if self.num_workers > 0:
            single_thread_opencv()
        dataset = self.datasets[split]
        # DDP: evaluation counts each sample once (training keeps Lightning's sampler)
        sampler = None if shuffle else eval_sampler(dataset)
        return SkipReportingLoader(
            dataset,
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle,
            sampler=sampler,
            drop_last=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            worker_init_fn=(functools.partial(seed_worker_transform, rank=self._rank())
                            if self.num_workers > 0 else None),
            prefetch_factor=self.prefetch_factor if self.num_workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
