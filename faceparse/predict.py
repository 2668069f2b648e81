"""Parse photos, folders and videos:
``python -m faceparse.predict ckpt=<checkpoint | run folder> input=<image|folder|glob|video>``.

Per image ``<stem>_mask.png`` (class ids at the photo's size, scheme and class names in
its text chunks), ``<stem>_color.png`` and, with ``save_overlay=true``,
``<stem>_overlay.png`` and ``<stem>_visualization.png``; per video a mask and an overlay
video. Options and defaults: ``conf/predict.yaml``. The exit code is non-zero only when
every input failed.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from faceparse.cli import hydra_entry, instantiate_option
from faceparse.inference.faces import read_boxes
from faceparse.inference.folder import Summary, WriteOptions, predict_files
from faceparse.inference.images import VIDEO_SUFFIXES, list_inputs, output_stems
from faceparse.inference.predictor import Parser
from faceparse.inference.video import predict_video
from faceparse.labels import get_scheme

log = logging.getLogger(__name__)


def _boxes_for(cfg: DictConfig, files: list[Path], stems: list[Path]) -> list | None:
    if cfg.crop != "box":
        return None
    if not cfg.boxes:
        raise ValueError("crop=box needs boxes=<JSON file> with the face boxes per image")
    table = read_boxes(cfg.boxes)
    return [table.get(f.name, table.get(str(s), table.get(f.stem, [])))
            for f, s in zip(files, stems, strict=True)]


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Run the command's config; returns the summary (images, failed, seconds, ...)."""
    if cfg.labels:
        get_scheme(cfg.labels)  # an unknown scheme is refused before the model loads
    out_dir = Path(cfg.output_dir)
    files, root = list_inputs(cfg.input, out_dir)
    videos = [f for f in files if f.suffix.lower() in VIDEO_SUFFIXES]
    images = [f for f in files if f not in videos]
    stems = output_stems(files, root)
    stem_of = dict(zip(files, stems, strict=True))
    boxes = _boxes_for(cfg, images, [stem_of[f] for f in images])
    parser = Parser.from_checkpoint(
        cfg.ckpt, cfg.vit_weights, cfg.device, cfg.trust_pickle, image_size=cfg.image_size,
        keep_aspect=cfg.keep_aspect, crop=cfg.crop, margin=cfg.margin, labels=cfg.labels,
        precision=cfg.precision, batch_size=cfg.batch_size,
        fast_path=instantiate_option(cfg.fast_path))
    if parser.unmapped:
        log.warning("labels=%s has no counterpart for %s: written as 255", cfg.labels,
                    ", ".join(parser.unmapped))
    options = WriteOptions(out_dir, cfg.save_overlay, cfg.alpha, cfg.save_probs, cfg.overwrite)
    summary = Summary()
    if images:
        summary = predict_files(parser, images, [stem_of[f] for f in images], options,
                                cfg.batch_size, cfg.num_workers, boxes)
    flicker = {}
    for video in videos:
        report = predict_video(parser, video, out_dir / stem_of[video], cfg.smoothing,
                               cfg.save_frames, cfg.alpha, cfg.overwrite)
        summary.images += report["frames"]
        summary.seconds += report["seconds"]
        summary.model_seconds += report["model_seconds"]
        flicker[str(video)] = report
    log.info("%s -> %s", summary.line(), out_dir)
    return {"images": summary.images, "failed": len(summary.failed), "skipped": summary.skipped,
            "seconds": summary.seconds, "images_per_s": summary.images_per_s,
            "model_seconds": summary.model_seconds,
            "inputs": len(files), "videos": flicker, "output_dir": str(out_dir)}


@hydra_entry("predict")
def main(cfg: DictConfig) -> None:
    try:
        result = predict(cfg)
    except (FileNotFoundError, ValueError, KeyError) as err:
        log.error("%s", err.args[0] if err.args else err)
        sys.exit(2)
    if result["inputs"] and result["failed"] == result["inputs"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
