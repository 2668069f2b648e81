"""Write a decoder-only checkpoint: ``python -m faceparse.export_decoder ckpt=... out=...``.

The frozen DINOv3 weights equal Meta's file, so shipping them again costs ~1.2 GB for a
ViT-L; the export keeps everything else, records a fingerprint of what it dropped and
reports it. ``faceparse.checkpoints.load_face_parser(out)`` needs the DINOv3 file beside
``out`` (or ``vit_weights=``) and rebuilds exactly the full checkpoint's model.
Options: ``trust_pickle=true`` reads a source checkpoint that needs arbitrary unpickling.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from omegaconf import OmegaConf

from faceparse.checkpoints import export_decoder_only

log = logging.getLogger(__name__)

USAGE = "usage: python -m faceparse.export_decoder ckpt=<full.ckpt> out=<decoder.ckpt>"


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``key=value`` arguments, export, log the report and return it."""
    args = OmegaConf.from_dotlist(sys.argv[1:] if argv is None else argv)
    unknown = set(args) - {"ckpt", "out", "trust_pickle"}
    if unknown or "ckpt" not in args or "out" not in args:
        raise SystemExit(f"{USAGE} [trust_pickle=true]; unknown: {sorted(unknown)}")
    report = export_decoder_only(args.ckpt, args.out, bool(args.get("trust_pickle", False)))
    log.info("wrote %s (%s, was %s)", args.out, _mb(report["size_after"]),
             _mb(report["size_before"]))
    log.info("removed %d keys, %d parameters: %s", report["removed_keys"],
             report["removed_params"], ", ".join(report["removed_modules"]) or "nothing")
    log.info("dropped checkpoint entries: %s", ", ".join(report["dropped_entries"]) or "none")
    if report["needs_beside_it"]:
        log.info("loading it needs beside it: %s", ", ".join(report["needs_beside_it"]))
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
