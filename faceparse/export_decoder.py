"""Write a decoder-only checkpoint: ``python -m faceparse.export_decoder ckpt=... out=...``.

The frozen DINOv3 weights equal Meta's file, so shipping them again costs ~1.2 GB for a
ViT-L; the export keeps everything else, records a fingerprint of what it dropped and
reports it. ``faceparse.checkpoints.load_face_parser(out)`` needs the DINOv3 file beside
``out`` (or ``vit_weights=``) and rebuilds exactly the full checkpoint's model.
Options: ``trust_pickle=true`` reads a source checkpoint that needs arbitrary unpickling.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from faceparse.checkpoints import export_decoder_only
from faceparse.cli import hydra_entry, one_line_errors

log = logging.getLogger(__name__)


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def export_decoder(cfg: DictConfig) -> dict[str, Any]:
    """Export ``cfg.ckpt`` to ``cfg.out``, log the report and return it."""
    report = export_decoder_only(cfg.ckpt, cfg.out, cfg.trust_pickle)
    log.info("wrote %s (%s, was %s)", cfg.out, _mb(report["size_after"]),
             _mb(report["size_before"]))
    log.info("removed %d keys, %d parameters: %s", report["removed_keys"],
             report["removed_params"], ", ".join(report["removed_modules"]) or "nothing")
    log.info("dropped checkpoint entries: %s", ", ".join(report["dropped_entries"]) or "none")
    if report["needs_beside_it"]:
        log.info("loading it needs beside it: %s", ", ".join(report["needs_beside_it"]))
    return report


@hydra_entry("export_decoder")
@one_line_errors(ValueError, KeyError, OSError, ImportError)
def main(cfg: DictConfig) -> None:
    export_decoder(cfg)


if __name__ == "__main__":
    main()
