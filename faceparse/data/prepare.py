"""Write the prepared form of a dataset once (see :mod:`faceparse.data.readers.prepared`).

Every sample is decoded, merged (CelebAMask-HQ parts), checked, resized to the training
size (area for images, nearest for labels) and written as a JPEG + label PNG pair, in
worker processes, with a progress bar. Resumable: a sample whose two files exist and whose
raw files are as they were (``sources.json``) is not redone; atomic: files appear under
their final name only when complete, and a split's index is written after its last sample,
so a killed run is never read as done.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from faceparse.data.io import BadSampleError, encode_image, write_atomic
from faceparse.data.readers.files import FileDataset
from faceparse.data.readers.prepared import (
    IMAGE_EXT,
    LABEL_EXT,
    VERSION,
    PreparedLayout,
    json_plain,
    source_fingerprint,
)
from faceparse.data.transforms import MASK_RESIZE

__all__ = ["prepare_split", "prepare_dataset", "SplitReport"]

log = logging.getLogger(__name__)


@dataclass
class SplitReport:
    """What one split's run did."""

    written: int = 0
    reused: int = 0
    skipped: int = 0
    redone: int = 0  # of ``written``: prepared before, their raw files changed since


def resize_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The first step of every transform, done once: square ``size``, labels never blended."""
    if image.shape[:2] != (size, size):
        shrink = image.shape[0] * image.shape[1] > size * size
        image = cv2.resize(image, (size, size),
                           interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if mask.shape != (size, size):
        mask = cv2.resize(mask, (size, size), interpolation=MASK_RESIZE)
    return image, mask


# The dataset and target of this worker process, set once by ``_init_worker``.
_JOB: dict = {}


def _init_worker(dataset: FileDataset, layout: PreparedLayout, size: int,
                 recorded: dict[str, str] | None) -> None:
    cv2.setNumThreads(1)
    _JOB.update(dataset=dataset, layout=layout, size=size, recorded=recorded)


def _prepare_one(index: int) -> tuple[str, str | None, str]:
    """('written' | 'redone' | 'reused' | 'skipped', reason, the sample's source
    fingerprint) for one sample."""
    dataset: FileDataset = _JOB["dataset"]
    layout: PreparedLayout = _JOB["layout"]
    recorded: dict[str, str] | None = _JOB["recorded"]
    sample_id = dataset.ids[index]
    fingerprint = source_fingerprint(dataset.source_files(sample_id))  # before it is read
    done = layout.is_done(dataset.split, sample_id)
    if done and (recorded.get(sample_id) == fingerprint if recorded is not None
                 else not _changed_since(dataset, layout, sample_id)):
        return "reused", None, fingerprint
    try:
        image, mask = resize_pair(*dataset.load_checked(index), _JOB["size"])
    except BadSampleError as err:
        if dataset.strict:
            raise
        return "skipped", str(err), fingerprint
    except Exception as err:  # name the files: a worker's traceback names none
        raise RuntimeError(f"failed to prepare {dataset.describe(index)}: {err!r}") from err
    write_atomic(layout.image_path(dataset.split, sample_id), encode_image(image, IMAGE_EXT))
    write_atomic(layout.label_path(dataset.split, sample_id), encode_image(mask, LABEL_EXT))
    return "redone" if done else "written", None, fingerprint


def _changed_since(dataset: FileDataset, layout: PreparedLayout, sample_id: str) -> bool:
    """For a copy made before ``sources.json``: whether a raw file of the sample is newer
    than its prepared label (written last), so a re-annotated mask is prepared again."""
    made = layout.label_path(dataset.split, sample_id).stat().st_mtime_ns
    for path in dataset.source_files(sample_id):
        try:
            if path.stat().st_mtime_ns > made:
                return True
        except OSError:
            return True  # gone or unreadable: reading it again says which
    return False


def _run(indices: Sequence[int], workers: int,
         init_args: tuple) -> Iterable[tuple[str, str | None, str]]:
    if workers <= 1:
        _init_worker(*init_args)
        yield from map(_prepare_one, indices)
        return
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=init_args) as pool:
        yield from pool.map(_prepare_one, indices, chunksize=8)


def prepare_split(dataset: FileDataset, layout: PreparedLayout, size: int, workers: int,
                  progress: Progress | None = None) -> SplitReport:
    """Prepare every sample of a raw dataset split, then write what it listed and its index."""
    if dataset.prepared is not None:
        raise ValueError("prepare reads the raw files: open the dataset with prepared_dir=None")
    report, done, sources = SplitReport(), [], {}
    task = progress.add_task(dataset.split, total=len(dataset)) if progress else None
    results = _run(range(len(dataset)), workers,
                   (dataset, layout, size, layout.read_sources(dataset.split)))
    for sample_id, (status, reason, fingerprint) in zip(dataset.ids, results, strict=True):
        sources[sample_id] = fingerprint
        if status == "redone":
            report.redone += 1
            status = "written"
        setattr(report, status, getattr(report, status) + 1)
        if status == "skipped":
            log.warning("skipped: %s", reason)
        else:
            done.append(sample_id)
        if progress is not None:
            progress.advance(task)
    layout.write_listed(dataset.split, dataset.ids)  # skipped ones too: not "added" later
    layout.write_sources(dataset.split, {i: sources[i] for i in done})
    layout.write_index(dataset.split, done)
    return report


def prepare_dataset(open_raw, prepared_dir: str | Path, size: int, splits: Sequence[str],
                    workers: int | None = None) -> dict[str, SplitReport]:
    """Prepare ``splits`` of the dataset that ``open_raw(split)`` opens from raw files.

    The native scheme is kept (``meta.json`` names it), so any target scheme can train
    on the result. An existing copy of another dataset, scheme or size is refused. Every
    split is opened (listed) before anything is written, so a split that cannot be (missing
    files, no images) is refused without leaving a half-prepared copy.
    """
    layout = PreparedLayout(Path(prepared_dir))
    workers = workers if workers is not None else os.cpu_count() or 1
    datasets: dict[str, FileDataset] = {split: open_raw(split) for split in splits}
    reports = {}
    with Progress("[bold]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn()) as progress:
        for split, dataset in datasets.items():
            meta = {"dataset": type(dataset).__name__, "scheme": dataset.native_scheme.name,
                    "image_size": size, "reader": dataset.recorded_settings()}
            old = layout.read_meta()
            # a copy from before the "reader" record is resumed as it is
            wanted = {k: v for k, v in json_plain(meta).items() if old is None or k in old
                      or k != "reader"}
            if old is not None and old.get("version") != VERSION:
                raise FileExistsError(f"{layout.root} holds a prepared copy in format "
                                      f"{old.get('version')}, this faceparse writes {VERSION}: "
                                      f"choose another data.dataset.prepared_dir (or delete "
                                      f"that copy)")
            if old is not None and {k: old.get(k) for k in wanted} != wanted:
                raise FileExistsError(f"{layout.root} holds a prepared copy of {old}, not "
                                      f"{meta}; choose another data.dataset.prepared_dir")
            if old is None:
                layout.write_meta(meta)
            reports[split] = prepare_split(dataset, layout, size, workers, progress)
    return reports
