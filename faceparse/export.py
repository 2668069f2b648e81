"""Export a checkpoint for deployment: ``python -m faceparse.export ckpt=... format=onnx out=...``.

The whole net (DINOv3 ViT included) goes to ONNX or TorchScript at a fixed input size,
or ``dynamic=true`` for any batch and side. Every export is compared with PyTorch on
synthetic faces, and one that differs beyond ``parity.atol`` / ``parity.min_agreement``
fails the command: ``out`` appears only once it passed, and never over ``ckpt``.
``faceparse.deploy.load_onnx_parser`` runs it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from faceparse.checkpoints import (
    CheckpointFile,
    load_face_parser,
    locate_checkpoint,
    read_checkpoint,
)
from faceparse.checkpoints.load import weight_files_read
from faceparse.cli import hydra_entry, keep_run_folder, one_line_errors
from faceparse.deploy import FORMATS, ParityError, check_parity, export_net, parity_inputs
from faceparse.option_values import booleans, number, path_value, shown, whole_number
from faceparse.writable import (
    output_file,
    refuse_overwriting,
    replacing,
    write_errors_naming,
)

log = logging.getLogger(__name__)


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export ``cfg.ckpt`` to ``cfg.out``, check parity, write and return the parity report."""
    fmt = str(cfg.format)
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt} is unknown: choose one of {', '.join(FORMATS)}")
    booleans("", dynamic=cfg.dynamic, trust_pickle=cfg.trust_pickle)
    if cfg.image_size is not None:
        whole_number("image_size", cfg.image_size, 1, "the input side in pixels (null: the "
                     "checkpoint's own)")
    check_parity_option(cfg.parity)
    images = whole_number("parity.images", cfg.parity.images, 1,
                          "the number of synthetic portraits compared")
    atol = number("parity.atol", cfg.parity.atol, 0, "the largest logit difference allowed")
    agreement = number("parity.min_agreement", cfg.parity.min_agreement, 0,
                       "the share of pixels whose labels must agree")
    if agreement > 1:
        raise ValueError(f"parity.min_agreement={shown(cfg.parity.min_agreement)}: a share "
                         f"of pixels, between 0 and 1")
    vit_weights = (None if cfg.vit_weights is None else
                   path_value("vit_weights", cfg.vit_weights, "a DINOv3 weight file"))
    out = output_file(cfg.out, "out")
    located = locate_checkpoint(cfg.ckpt)
    refuse_overwriting(out, located.path)
    ckpt = read_checkpoint(located.path, cfg.trust_pickle)
    refuse_overwriting_weights(out, ckpt, vit_weights)
    net, scheme = load_face_parser(ckpt, vit_weights)
    image_size = cfg.image_size or (ckpt.metadata or {}).get("image_size")
    if not image_size:
        raise ValueError(f"{located.path} records no training image size: set image_size=")
    image_size = int(image_size)
    keep_run_folder()  # what fails from here on failed a run: its log stays
    sizes = [image_size] + ([image_size + 2 * net.size_multiple] if cfg.dynamic else [])
    reports = []
    # out appears only once it passed parity; a write that fails is one line naming it
    with write_errors_naming(out), replacing(out) as partial:
        exported = export_net(net, partial, fmt, scheme, image_size, cfg.dynamic)
        for size in sizes:
            reports.append(check_parity(net, exported, parity_inputs(images, size), atol,
                                        agreement))
            log.info("%s", reports[-1].describe())
    result = {"checkpoint": str(located.path), "out": str(out), "format": fmt,
              "labels": scheme.name, "image_size": image_size, "dynamic": cfg.dynamic,
              "parity": [r.to_json() for r in reports]}
    with write_errors_naming(Path(f"{out}.parity.json")) as report:
        report.write_text(json.dumps(result, indent=2))
    log.info("wrote %s (%s, %.1f MiB)", out, fmt, out.stat().st_size / 2**20)
    return result


def check_parity_option(parity: Any) -> None:
    """``parity=`` is a group of three settings, and the check cannot be switched off:
    ``parity=null`` or ``parity=5`` is one line, not an AttributeError's traceback."""
    if not isinstance(parity, DictConfig):
        raise ValueError(f"parity={shown(parity)}: parity takes parity.images=, parity.atol= "
                         f"and parity.min_agreement= (the check cannot be switched off: an "
                         f"export is written only once it matches PyTorch)")


def refuse_overwriting_weights(out: Path, ckpt: CheckpointFile, vit_weights: Path | None
                               ) -> None:
    """``out`` must not replace a DINOv3 file the export reads (``vit_weights=``, or the
    one beside a decoder-only checkpoint): it is half the model, licensed, 1.2 GB."""
    files = weight_files_read(ckpt, vit_weights)
    for file in [*files, *([vit_weights] if vit_weights else [])]:
        refuse_overwriting(out, file, what="the DINOv3 weight file the export reads")


@hydra_entry("export")
@one_line_errors(ValueError, KeyError, OSError, ImportError, ParityError)
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
