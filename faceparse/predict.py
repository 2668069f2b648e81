"""Parse photos, folders and videos:
``python -m faceparse.predict ckpt=<checkpoint | run folder> input=<image|folder|glob|video>``.

Per image ``<stem>_mask.png`` (class ids at the photo's size, scheme and class names in
its text chunks), ``<stem>_color.png`` and, with ``save_overlay=true``,
``<stem>_overlay.png`` and ``<stem>_visualization.png``; per video a mask and an overlay
video. Options and defaults: ``conf/predict.yaml``. A bad input (image or video) is a
warning and a count in the closing summary, as is, with crop=faces|box, a photo with no
face or no usable box (it gets no files), and with crop=box each box left out of a photo
whose other boxes were parsed (empty or outside it). Videos with crop=faces keep every
frame: frames without a face are all background, one warning per video and a count (see
:mod:`faceparse.inference.video`); crop=box takes no videos. The exit code is non-zero
only when no input was parsed: every one failed or had no face/box. A failed write
(disk full, no permission) stops the run with one line naming the output and its input
(exit code 2); what was written is kept, so a rerun resumes.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from faceparse.cli import discard_refused_run, hydra_entry, instantiate_option, keep_run_folder
from faceparse.data.io import BadSampleError
from faceparse.inference.faces import read_boxes
from faceparse.inference.folder import Summary, WriteOptions, predict_files
from faceparse.inference.listing import VIDEO_SUFFIXES, list_inputs, output_stems
from faceparse.inference.model import resolve_device
from faceparse.inference.options import check_predict_options
from faceparse.inference.predictor import Parser
from faceparse.inference.provenance import (
    Verdict,
    judge,
    judge_text,
    left_behind,
    read_record_file,
    run_record,
    source_record,
)
from faceparse.inference.video import (
    NO_BOXES_FOR_VIDEO,
    check_smoothing,
    frame_ranges,
    predict_video,
)
from faceparse.inference.video_outputs import frame_mask_name, frame_masks, video_paths
from faceparse.labels import get_scheme
from faceparse.option_values import path_value
from faceparse.writable import check_output_dir, output_dir

log = logging.getLogger(__name__)


def _key(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (POSIX), what a boxes file keys a photo by."""
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        return path.name


def _boxes_for(cfg: DictConfig, files: list[Path], root: Path) -> list | None:
    """Per image its boxes from ``boxes=`` (crop=box; ``None`` for an image not in it).

    A photo is looked up by its path under ``input=`` (``sub/a.png``) first, then by its
    bare name (``a.png``), its path without the suffix (``sub/a``) and its stem (``a``),
    each only where no other input shares it: a key that fits several photos is not
    guessed for any of them but the one whose path it is, and is a warning.
    """
    if cfg.crop != "box":
        return None
    if not cfg.boxes:
        raise ValueError("crop=box needs boxes=<JSON file> with the face boxes per image")
    table = read_boxes(cfg.boxes)
    paths = [_key(f, root) for f in files]
    ways = [[f.name for f in files], [p.rsplit(".", 1)[0] for p in paths],
            [f.stem for f in files]]
    shared = [Counter(names) for names in ways]
    found: list = []
    ambiguous: dict[str, tuple[int, list[str]]] = {}
    for i, path in enumerate(paths):
        found.append(table.get(path))
        for names, counts in zip(ways, shared, strict=True):
            if found[-1] is not None or names[i] not in table:
                continue
            if counts[names[i]] == 1:
                found[-1] = table[names[i]]
            else:
                ambiguous.setdefault(names[i], (counts[names[i]], []))[1].append(path)
    for key, (count, fits) in ambiguous.items():
        log.warning('boxes=%s: key "%s" fits %d inputs, so it is not used for %s%s (not its '
                    'path under input=); key each photo by its path, e.g. "%s"', cfg.boxes,
                    key, count, ", ".join(fits[:3]), ", ..." if len(fits) > 3 else "", fits[0])
    return found


def _without_box(cfg: DictConfig, images: list[Path], boxes: list | None, root: Path
                 ) -> list[tuple[str, str]]:
    """The images crop=box has no box for, each a warning: ``(file, reason)``."""
    if boxes is None:
        return []
    missing = []
    for image, given in zip(images, boxes, strict=True):
        if not given:
            reason = f'no box for it in boxes={cfg.boxes} (key "{_key(image, root)}")'
            log.warning("no mask: %s: %s", image, reason)
            missing.append((str(image), reason))
    return missing


def _videos_without_box(videos: list[Path]) -> list[tuple[str, str]]:
    """crop=box has boxes per photo only: each video is a warning, ``(file, reason)``."""
    for video in videos:
        log.warning("no mask: %s: %s", video, NO_BOXES_FOR_VIDEO)
    return [(str(video), NO_BOXES_FOR_VIDEO) for video in videos]


def _video_verdict(parser: Parser, video: Path, out_stem: Path, record: dict
                   ) -> Verdict | None:
    """What ``video``'s existing outputs record, from ``<stem>_video.json`` or, for outputs
    written before that file, the first frame mask; ``None`` if neither is there."""
    paths = video_paths(out_stem)
    record_file, frame = paths["record"], paths["frames"] / "000000_mask.png"
    if record_file.is_file():
        text = read_record_file(record_file)
        if text is None:
            return Verdict("redo", f"its record {record_file} is not readable")
        return judge_text(text, video, record, parser.scheme.name)
    return judge(frame, video, record, parser.scheme.name) if frame.is_file() else None


def _missing_video_outputs(out_stem: Path, save_frames: bool) -> str | None:
    """What a finished video's outputs lack (the mask video deleted, or frame masks asked
    for now but not written then, or some of them deleted since); ``None`` if nothing."""
    paths = video_paths(out_stem)
    if not paths["mask"].is_file():
        return f"its mask video {paths['mask'].name} is"
    if not save_frames:
        return None
    frames = _recorded_frames(paths["record"])
    wanted = {frame_mask_name(n) for n in range(frames or 1)}  # unrecorded: the first
    missing = wanted - {p.name for p in frame_masks(paths["frames"])}
    if len(missing) == len(wanted):
        return f"its frame masks {paths['frames'].name}/ (save_frames=true) are"
    if missing:
        return (f"{len(missing)} of its {len(wanted)} frame masks in "
                f"{paths['frames'].name}/ (e.g. {min(missing)}) are")
    return None


def _recorded_frames(record_file: Path) -> int | None:
    """The frame count ``<stem>_video.json`` records (``None``: no such record)."""
    try:
        frames = json.loads(record_file.read_text(encoding="utf-8")).get("frames")
    except (OSError, ValueError, AttributeError):
        return None
    return frames if isinstance(frames, int) and frames > 0 else None


def _video_overwrite(parser: Parser, cfg: DictConfig, video: Path, out_stem: Path,
                     record: dict | None, summary: Summary) -> bool | None:
    """Whether to redo ``video``'s outputs: ``cfg.overwrite``, or what made them (see
    :func:`_video_verdict`) is stale (a warning). ``None``: another video made them
    (refused, a failed count)."""
    done = video_paths(out_stem)["overlay"]
    if cfg.overwrite or record is None or not done.exists():
        return bool(cfg.overwrite)
    verdict = _video_verdict(parser, video, out_stem, record)
    missing = _missing_video_outputs(out_stem, cfg.save_frames)
    if missing and (verdict is None or verdict.action == "skip"):
        verdict = Verdict("redo", f"{missing} missing")
    if verdict is None:
        log.warning("kept the outputs %s of %s: written before videos recorded their source "
                    "and checkpoint, nothing tells whether they are stale; overwrite=true "
                    "redoes them", done, video)
        return False
    if verdict.action == "clash":
        reason = (f"outputs {done} exist and {verdict.reason}: not overwritten (give another "
                  f"output_dir=, or overwrite=true to replace them)")
        log.warning("skipped: %s: %s", video, reason)
        summary.failed.append((str(video), reason))
        return None
    if verdict.action == "redo":
        log.warning("parsing %s again: its outputs %s are stale: %s", video, done,
                    verdict.reason)
        return True
    return False


def _predict_videos(parser: Parser, cfg: DictConfig, videos: list[Path], out_dir: Path,
                    stem_of: dict[Path, Path], root: Path, summary: Summary
                    ) -> dict[str, Any]:
    """Each video through ``parser``; an unreadable one is a warning and a failed count,
    one whose outputs exist (and record this video and run) a skipped count.
    With crop=faces, frames without a face are one warning per video and a count; a video
    with no face in any frame counts as an input without a face (nothing is kept)."""
    flicker = {}
    run = run_record(parser)  # smoothing changes a video's labels too
    run["settings"]["smoothing"] = check_smoothing(cfg.smoothing)
    run["settings"]["alpha"] = float(cfg.alpha)  # the overlay video's blend
    for video in videos:
        try:
            record = source_record(video, root, None, run)
        except OSError:
            record = None  # opening it fails below, naming it
        earlier = left_behind(video, root, stem_of[video], out_dir, video=True)
        if earlier is not None:
            log.warning("left behind: %s and its videos are %s's outputs from before a file "
                        "with the same name renamed its outputs %s_*; delete them",
                        earlier, video, stem_of[video].name)
        overwrite = _video_overwrite(parser, cfg, video, out_dir / stem_of[video], record,
                                     summary)
        if overwrite is None:
            continue
        try:
            report = predict_video(parser, video, out_dir / stem_of[video],
                                   cfg.smoothing, cfg.save_frames, cfg.alpha, overwrite,
                                   record)
        except BadSampleError as err:
            log.warning("skipped: %s", err)
            summary.failed.append((str(video), str(err)))
            continue
        if report["skipped"]:
            summary.skipped += 1
            continue
        faceless = report["frames_without_face"]
        stale = overwrite and not cfg.overwrite  # outputs there but stale: parsed again
        if faceless and len(faceless) == report["frames"]:
            reason = (f"no face detected in any of its {len(faceless)} frames (crop=faces); "
                      f"nothing written")
            log.warning("no mask: %s: %s", video, reason)
            summary.without_face.append((str(video), reason))
        elif faceless:
            log.warning("no face in %d of the %d frames of %s (frames %s; crop=faces): their "
                        "masks are all background", len(faceless), report["frames"], video,
                        frame_ranges(faceless))
            summary.faceless_frames += len(faceless)
        if stale and len(faceless) < report["frames"]:
            summary.redone += 1
        summary.images += report["frames"] - len(faceless)
        summary.seconds += report["seconds"]
        summary.model_seconds += report["model_seconds"]
        flicker[str(video)] = report
    return flicker


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Run the command's config; returns the summary (images, failed, seconds, ...)."""
    check_predict_options(cfg)
    if cfg.labels:
        get_scheme(cfg.labels)  # an unknown scheme is refused before the model loads
    check_smoothing(cfg.smoothing)
    resolve_device(cfg.device)
    out_dir = path_value("output_dir", cfg.output_dir, "a folder for the outputs")
    files, root = list_inputs(cfg.input, out_dir)
    videos = [f for f in files if f.suffix.lower() in VIDEO_SUFFIXES]
    images = [f for f in files if f not in videos]
    stems = output_stems(files, root)
    stem_of = dict(zip(files, stems, strict=True))
    boxes = _boxes_for(cfg, images, root)
    without_box = _without_box(cfg, images, boxes, root)
    if cfg.crop == "box":
        without_box += _videos_without_box(videos)
        videos = []
    if boxes is not None:  # only the images with boxes go to the model
        images = [f for f, b in zip(images, boxes, strict=True) if b]
        boxes = [b for b in boxes if b]
    check_output_dir(out_dir, "output_dir")  # refused before the model loads, made after
    parser = Parser.from_checkpoint(
        cfg.ckpt, cfg.vit_weights, cfg.device, cfg.trust_pickle, image_size=cfg.image_size,
        keep_aspect=cfg.keep_aspect, crop=cfg.crop, margin=cfg.margin, labels=cfg.labels,
        precision=cfg.precision, batch_size=cfg.batch_size,
        fast_path=instantiate_option(cfg.fast_path))
    keep_run_folder()  # what fails from here on failed a run: its log stays
    output_dir(out_dir, "output_dir")
    if parser.unmapped:
        log.warning("labels=%s has no counterpart for %s: written as 255", cfg.labels,
                    ", ".join(parser.unmapped))
    options = WriteOptions(out_dir, cfg.save_overlay, cfg.alpha, cfg.save_probs, cfg.overwrite)
    summary = Summary()
    if images:
        summary = predict_files(parser, images, [stem_of[f] for f in images], options,
                                cfg.batch_size, cfg.num_workers, boxes, root)
    summary.without_face = without_box + summary.without_face
    flicker = _predict_videos(parser, cfg, videos, out_dir, stem_of, root, summary)
    log.info("%s -> %s", summary.line(), out_dir)
    return {"images": summary.images, "failed": len(summary.failed), "skipped": summary.skipped,
            "without_face": len(summary.without_face), "redone": summary.redone,
            "unusable_boxes": len(summary.unusable_boxes),
            "faceless_frames": summary.faceless_frames,
            "seconds": summary.seconds, "images_per_s": summary.images_per_s,
            "model_seconds": summary.model_seconds,
            "inputs": len(files), "videos": flicker, "output_dir": str(out_dir)}


@hydra_entry("predict")
def main(cfg: DictConfig) -> None:
    try:
        result = predict(cfg)
    except (OSError, ValueError, KeyError, ImportError) as err:
        # a KeyError's str() is its repr; an OSError's first argument is its errno
        log.error("%s", err.args[0] if isinstance(err, KeyError) and err.args else err)
        discard_refused_run()
        sys.exit(2)
    if result["inputs"] and result["failed"] + result["without_face"] == result["inputs"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
