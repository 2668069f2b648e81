"""Many images through a parser: decode, predict, then the photo side in writer threads.

The main thread runs the model; writer threads resize each photo's logits back to its size,
take the argmax, colour and write the PNGs (NumPy and OpenCV only: no torch op, so no more
intra-op threads than cores). Beside a GPU, loader processes decode the photos and the
writes overlap the next batches (at most :data:`AHEAD` batches in flight while the model
runs, so memory stays bounded). On a CPU the model and the rest share the same cores:
anything running beside the model leaves its intra-op threads waiting on each other at
every layer, so there they take turns: the model on all cores, then the writer threads (one
per model thread) write this batch and decode the next one.

A bad file (unreadable, truncated, not an image, a folder, a broken link) is a warning
naming it and a count in the summary; the run goes on. With crop=faces|box, a photo where
no face was found or whose boxes all miss it is a warning and a count too, and gets no
files: an all-background mask would pass for a parsed photo. With crop=box, a box that is
empty or outside its photo beside usable ones is left out with a warning naming the photo
and the box, and counted; the photo's other boxes are parsed. Outputs that exist are
skipped unless ``overwrite``, so an interrupted run resumes where it stopped, but only when
their mask records this photo, checkpoint, scheme and settings
(:mod:`faceparse.inference.provenance`): outputs this photo got from another checkpoint,
scheme or settings, or before it changed, are redone with a warning saying what differed;
outputs another photo with the same output name made are not overwritten (a warning and a
failed count: give another ``output_dir`` or ``overwrite=true``). A failed
write (disk full, no permission) stops the run with an :class:`OutputWriteError` naming
the output and its photo; what was written stays, so a rerun resumes.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress
from torch.utils.data import DataLoader, Dataset

from faceparse.data.io import BadSampleError
from faceparse.inference.faces import Box, unusable_reason
from faceparse.inference.images import read_photo
from faceparse.inference.outputs import (
    OutputWriteError,
    output_paths,
    write_outputs,
    writing_outputs_of,
)
from faceparse.inference.predictor import Parser, ParseResult
from faceparse.inference.provenance import judge, left_behind, run_record, source_record

log = logging.getLogger(__name__)

__all__ = ["AHEAD", "Summary", "WriteOptions", "predict_files", "writer_threads"]

AHEAD = 2  # batches whose writes may be in flight while the model runs (on a GPU)


@dataclass
class Summary:
    """What a run did; ``failed``, ``without_face`` (crop=faces|box found no face or no
    usable box: nothing written) and ``unusable_boxes`` (crop=box: a box left out of a
    photo whose other boxes were parsed) list ``(file, reason)``; ``images`` counts the
    photos and video frames parsed (not the ``faceless_frames``); ``model_seconds`` the
    time the main thread spent in model passes (with crop=faces|box, also detecting and
    pasting)."""

    images: int = 0
    skipped: int = 0
    redone: int = 0  # parsed again: outputs there were stale (another checkpoint, settings...)
    failed: list[tuple[str, str]] = field(default_factory=list)
    without_face: list[tuple[str, str]] = field(default_factory=list)
    unusable_boxes: list[tuple[str, str]] = field(default_factory=list)
    faceless_frames: int = 0  # video frames (crop=faces) without a face: all background
    seconds: float = 0.0
    model_seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        share = f", model {self.model_seconds / self.seconds:.0%} of it" if self.seconds else ""
        faceless = (f"{len(self.without_face)} without a face/box, " if self.without_face
                    else "")
        bad = len(self.unusable_boxes)
        boxes = f"{bad} unusable box{'es' if bad > 1 else ''} left out, " if bad else ""
        frames = (f"{self.faceless_frames} video frames without a face (background), "
                  if self.faceless_frames else "")
        redone = f"{self.redone} redone (stale outputs), " if self.redone else ""
        return (f"{self.images} images, {len(self.failed)} failed, {faceless}{boxes}{frames}"
                f"{self.skipped} skipped (outputs exist), {redone}{self.seconds:.1f} s{share}, "
                f"{self.images_per_s:.2f} images/s")


@dataclass(frozen=True)
class WriteOptions:
    out_dir: Path
    save_overlay: bool = False
    alpha: float = 0.5
    save_probs: bool = False
    overwrite: bool = False


def _read(path: Path) -> np.ndarray | str:
    """The decoded photo, or the error message of a bad file."""
    try:
        return read_photo(path)
    except BadSampleError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - a decoder's own failure must not end the run
        return f"not a readable image ({type(err).__name__}: {err}): {path}"


class _Photos(Dataset):
    """Decoded photos by index (for loader processes beside a GPU)."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | str]:
        return i, _read(self.files[i])


def _as_list(batch: list) -> list:
    return batch


def _decoded_in(pool: ThreadPoolExecutor, files: list[Path], batch_size: int
                ) -> Iterator[list[tuple[int, np.ndarray | str]]]:
    """Batches decoded by the writer threads. Each batch is submitted when the previous
    one's model pass is over, after its writes: on a CPU they share the turn between
    model passes instead of taking cores from the model."""
    for first in range(0, len(files), batch_size):
        reads = [(j, pool.submit(_read, files[j]))
                 for j in range(first, min(len(files), first + batch_size))]
        yield [(j, future.result()) for j, future in reads]


def _write(parser: Parser, source: Path, rgb: np.ndarray, result: torch.Tensor | ParseResult,
           stem: Path, options: WriteOptions, record: dict) -> None:
    """The photo side of one image: (crop=none) logits back to its size and argmax, then
    its files, the mask recording what made it (``record`` and the photo's size); a failed
    write is an :class:`OutputWriteError` naming the file and ``source``."""
    if not isinstance(result, ParseResult):
        result = parser.finish(result, rgb.shape[:2], options.save_probs)
    with writing_outputs_of(source):
        made_from = {**record, "size": [rgb.shape[1], rgb.shape[0]]}
        write_outputs(options.out_dir, stem, rgb, result, options.save_overlay, options.alpha,
                      parser.model.scheme, made_from)


def writer_threads(device: torch.device, loader_workers: int = 0) -> int:
    """On a CPU as many as the model's intra-op threads (the writes run between batches,
    on the cores the model uses); beside a GPU the cores the loader leaves free, at least
    two: there the writes are the CPU work users wait for (an H100 parsed 129 images/s of
    512 px while two writer threads wrote 25 images/s of PNGs)."""
    if device.type == "cpu":
        return max(1, min(8, torch.get_num_threads()))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(2, min(16, (cores or 2) - loader_workers))


def _run_model(parser: Parser, good: list[tuple[int, np.ndarray]], options: WriteOptions,
               boxes: list[list[Box] | None] | None) -> list[torch.Tensor] | list[ParseResult]:
    """One batch through the model: per photo its logits on the CPU (crop=none: the writer
    threads do the rest) or, with face crops, the finished result."""
    rgbs = [rgb for _, rgb in good]
    if parser.crop == "none":
        return [lg.float().cpu() for lg in parser.photo_logits(rgbs)]
    given = [boxes[i] for i, _ in good] if boxes is not None else None
    # warn=False: _with_faces reports the unusable boxes, naming the file, and counts them
    return parser.predict_batch(rgbs, options.save_probs, given, warn=False)


def _no_crop_reason(crop: str, rgb: np.ndarray, given: list[Box] | None) -> str:
    """Why a photo got no face crop, for its warning."""
    if crop == "faces":
        return "no face detected (crop=faces); give its box with crop=box"
    if not given:
        return "no box for it"
    return unusable_reason(given, rgb.shape[1], rgb.shape[0])


def _with_faces(good: list[tuple[int, np.ndarray]],
                results: list[torch.Tensor] | list[ParseResult], parser: Parser,
                boxes: list[list[Box] | None] | None, files: list[Path], summary: Summary
                ) -> tuple[list[tuple[int, np.ndarray]], list]:
    """The photos and results that had a face crop; the others are a warning and a count,
    as is each unusable box of a photo whose other boxes were parsed."""
    kept, kept_results = [], []
    for (i, rgb), result in zip(good, results, strict=True):
        given = boxes[i] if boxes is not None else None
        if isinstance(result, ParseResult) and not result.boxes:
            reason = _no_crop_reason(parser.crop, rgb, given)
            log.warning("no mask: %s: %s", files[i], reason)
            summary.without_face.append((str(files[i]), reason))
            continue
        for box in result.unusable_boxes if isinstance(result, ParseResult) else []:
            reason = unusable_reason([box], rgb.shape[1], rgb.shape[0])
            log.warning("box left out: %s: %s; its other boxes are parsed", files[i], reason)
            summary.unusable_boxes.append((str(files[i]), reason))
        kept.append((i, rgb))
        kept_results.append(result)
    return kept, kept_results


def _remove_earlier_outputs(faceless: list[int], files: list[Path], stems: list[Path],
                            out_dir: Path) -> None:
    """A photo parsed again (stale outputs, ``overwrite=true``) that now has no face or
    usable box gets no files: the earlier run's, made with other settings, go, with a
    warning, rather than stand as its result. Only photos judged this photo's own reach
    here (another photo's outputs are refused before parsing)."""
    for i in faceless:
        earlier = [p for p in output_paths(out_dir, stems[i], True, True) if p.is_file()]
        for path in earlier:
            path.unlink()
        if earlier:
            log.warning("removed %s: the earlier outputs of %s, which has no face or usable "
                        "box now", ", ".join(p.name for p in earlier), files[i])


def _submit_writes(writer: ThreadPoolExecutor, parser: Parser,
                   good: list[tuple[int, np.ndarray]],
                   results: list[torch.Tensor] | list[ParseResult], files: list[Path],
                   stems: list[Path], options: WriteOptions, records: dict[int, dict]
                   ) -> list[Future]:
    """Hand each photo's remaining work to the writer threads."""
    return [writer.submit(_write, parser, files[i], rgb, result, stems[i], options,
                          records[i])
            for (i, rgb), result in zip(good, results, strict=True)]


def _wait(writer: ThreadPoolExecutor, writes: list[Future]) -> None:
    """Wait for one batch's writes. A failed one (disk full, no permission) stops the run
    with its :class:`OutputWriteError`, the work not yet started cancelled: every later
    write would most likely fail the same way."""
    try:
        for future in writes:
            future.result()
    except OutputWriteError:
        writer.shutdown(wait=False, cancel_futures=True)
        raise


def _record_of(run: dict, photo: Path, root: Path | None,
               boxes: list[list[Box] | None] | None, i: int) -> dict | None:
    """What photo ``i``'s mask records (``None`` if the photo cannot be stat'ed: reading
    it fails and says why)."""
    if boxes is not None:
        run = {**run, "settings": {**run["settings"], "boxes": [list(b) for b in boxes[i] or []]}}
    try:
        return source_record(photo, root, None, run)
    except OSError:
        return None


def _sort_out(parser: Parser, files: list[Path], stems: list[Path], options: WriteOptions,
              root: Path | None, boxes: list[list[Box] | None] | None, summary: Summary
              ) -> tuple[list[int], dict[int, dict], set[int]]:
    """The inputs to parse, what each one's mask will record, and those whose outputs
    are stale. Existing outputs are skipped when their mask records this photo and run,
    redone with a warning when they are this photo's but stale, and refused (failed) when
    another photo made them."""
    inputs = {f.resolve() for f in files}
    run, scheme = run_record(parser), parser.scheme.name
    if options.save_overlay:  # the overlay's blend: another alpha makes other overlays
        run["settings"]["alpha"] = float(options.alpha)
    todo, records, stale_outputs, unrecorded = [], {}, set(), 0
    for i, stem in enumerate(stems):
        targets = output_paths(options.out_dir, stem, options.save_overlay, options.save_probs)
        record = _record_of(run, files[i], root, boxes, i)
        records[i] = record or {}
        stale = left_behind(files[i], root, stem, options.out_dir)
        if stale is not None:
            log.warning("left behind: %s is %s's mask from before a file with the same name "
                        "renamed its outputs %s_*; delete it and its other files", stale,
                        files[i], stem.name)
        if any(t.resolve() in inputs for t in targets):
            log.warning("skipped: %s (its output would overwrite an input)", files[i])
            summary.failed.append((str(files[i]), "its output would overwrite an input"))
            continue
        if options.overwrite or record is None or not targets[0].is_file():
            todo.append(i)
            continue
        verdict = judge(targets[0], files[i], record, scheme)
        if verdict.action == "clash":
            reason = (f"outputs {targets[0]} exist and {verdict.reason}: not overwritten "
                      f"(give another output_dir=, or overwrite=true to replace them)")
            log.warning("skipped: %s: %s", files[i], reason)
            summary.failed.append((str(files[i]), reason))
        elif verdict.action == "redo":
            log.warning("parsing %s again: its outputs %s are stale: %s", files[i],
                        targets[0], verdict.reason)
            stale_outputs.add(i)
            todo.append(i)
        elif all(t.exists() for t in targets):
            summary.skipped += 1
            unrecorded += verdict.unrecorded
        else:
            todo.append(i)
    if unrecorded:
        log.warning("kept the outputs of %d inputs written before masks recorded their "
                    "source and checkpoint: their scheme and size fit, nothing else tells; "
                    "overwrite=true redoes them", unrecorded)
    return todo, records, stale_outputs


def predict_files(parser: Parser, files: list[Path], stems: list[Path], options: WriteOptions,
                  batch_size: int = 8, num_workers: int = 2,
                  boxes: list[list[Box] | None] | None = None, root: Path | None = None
                  ) -> Summary:
    """Parse ``files`` and write each one's outputs under ``options.out_dir / stem``;
    ``root``: the folder ``input=`` named (masks record the photo's path relative to it)."""
    summary = Summary()
    todo, records, stale_outputs = _sort_out(parser, files, stems, options, root, boxes,
                                             summary)
    start = time.perf_counter()
    device = parser.model.device
    ahead = 0 if device.type == "cpu" else AHEAD
    photos = [files[i] for i in todo]
    batches: deque[list[Future]] = deque()  # the writes of each batch still in flight
    with ThreadPoolExecutor(writer_threads(device, num_workers)) as writer, \
            Progress(transient=True) as progress:
        task = progress.add_task("parsing", total=len(todo))
        source = (_decoded_in(writer, photos, batch_size) if device.type == "cpu" else
                  DataLoader(_Photos(photos), batch_size=batch_size, num_workers=num_workers,
                             collate_fn=_as_list))
        for batch in source:
            while len(batches) > ahead:
                _wait(writer, batches.popleft())
            good = [(todo[j], item) for j, item in batch if not isinstance(item, str)]
            for j, item in batch:
                if isinstance(item, str):
                    log.warning("skipped: %s", item)
                    summary.failed.append((str(files[todo[j]]), item))
            if good:
                model_start = time.perf_counter()
                results = _run_model(parser, good, options, boxes)
                summary.model_seconds += time.perf_counter() - model_start
                faced, results = _with_faces(good, results, parser, boxes, files, summary)
                _remove_earlier_outputs([i for i, _ in good if i not in dict(faced)], files,
                                        stems, options.out_dir)
                good = faced  # a stale photo that failed or has no face now is not redone
                summary.redone += sum(i in stale_outputs for i, _ in good)
                batches.append(_submit_writes(writer, parser, good, results, files, stems,
                                              options, records))
                summary.images += len(good)
            progress.advance(task, len(batch))
        while batches:
            _wait(writer, batches.popleft())
    summary.seconds = time.perf_counter() - start
    return summary
