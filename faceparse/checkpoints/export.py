"""Decoder-only export: our checkpoint without the frozen DINOv3 weights.

The frozen ViT equals Meta's file, so shipping it again costs ~1.2 GB for a ViT-L; the
export keeps everything else, records a fingerprint of what it dropped (checked when the
file is loaded beside a DINOv3 file) and reports what it removed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from faceparse.checkpoints.format import (
    META_KEY,
    NET_PREFIX,
    build_net,
    fingerprint,
    frozen_keys,
    vit_modules,
)
from faceparse.checkpoints.locate import locate_checkpoint
from faceparse.checkpoints.read import read_checkpoint
from faceparse.option_values import path_value
from faceparse.writable import (
    output_file,
    refuse_overwriting,
    replacing,
    write_errors_naming,
)

__all__ = ["export_decoder_only"]


def _config_at(config: Mapping[str, Any], at: str) -> Mapping[str, Any]:
    for key in at.split("."):
        config = config[key]
    return config


def _rounded_to_bf16(tensors: Mapping[str, torch.Tensor]) -> bool:
    """Whether wider float weights all hold bf16 values: the frozen ViT of a run that stored
    it in bf16 (``fast_path.frozen_vit_bf16``), saved in its old dtype. A file's own
    weights are bf16-exact only by chance, never every tensor of a ViT."""
    floats = [t for t in tensors.values() if t.is_floating_point()]
    return bool(floats) and all(
        t.dtype != torch.bfloat16 and torch.equal(t, t.to(torch.bfloat16).to(t.dtype))
        for t in floats)


def export_decoder_only(
    ckpt_path: str | Path, out_path: str | Path, trust_pickle: bool = False
) -> dict[str, Any]:
    """Write ``ckpt_path`` (a file or a training run folder) without its frozen DINOv3
    weights; return what was removed.

    ``out_path`` is checked before any work (a folder, an unwritable place, the checkpoint
    itself or a DINOv3 file it needs are refused), is written whole or not at all, and
    never over ``ckpt_path`` (its tensors are memory-mapped while they are written).
    """
    out = output_file(path_value("out", out_path).expanduser(), "out", "decoder.ckpt")
    located = locate_checkpoint(ckpt_path)
    refuse_overwriting(out, located.path)
    ckpt = read_checkpoint(located.path, trust_pickle)
    path, state, meta = ckpt.path, ckpt.state_dict, ckpt.metadata or {}
    if not meta.get("model"):
        raise ValueError(f"{path} has no faceparse model config; export needs one")
    _refuse_decoder_only(path, meta)
    with torch.device("meta"):
        skeleton = build_net(meta["model"], source=str(path))
    sources = _frozen_vit_files(skeleton, meta["model"], path)
    for _, file in sources.values():
        _refuse_replacing_weights(out, file)
    external, removed = {}, set()
    for at, (keys, file) in sources.items():
        tensors = {k: state[NET_PREFIX + k] for k in keys}
        external[at] = {"file": Path(file).name, "keys": keys, "sha256": fingerprint(tensors)}
        if _rounded_to_bf16(tensors):  # a bf16-mixed run kept its frozen ViT in bf16
            external[at]["rounded_to"] = "bfloat16"
        removed.update(NET_PREFIX + k for k in keys)
    kept = {k: v for k, v in state.items() if k not in removed}
    report = {
        "source": str(path),
        "removed_keys": len(removed),
        "removed_params": sum(state[k].numel() for k in removed),
        "removed_modules": sorted(f"{NET_PREFIX}{at}.model" for at in external),
        "kept_keys": len(kept),
        "needs_beside_it": sorted(spec["file"] for spec in external.values()),
        "dropped_entries": sorted(k for k in ckpt.contents if k not in ("state_dict", META_KEY)),
    }
    export_meta = {**meta, "decoder_only": {"external": external, "report": report}}
    _write(out, {META_KEY: export_meta, "state_dict": kept})
    report.update(size_before=path.stat().st_size, size_after=out.stat().st_size)
    return report


def _refuse_decoder_only(path: Path, meta: Mapping[str, Any]) -> None:
    """A decoder-only file has no frozen ViT weights left to remove: say so by name."""
    external = (meta.get("decoder_only") or {}).get("external") or {}
    if external:
        files = ", ".join(sorted(spec["file"] for spec in external.values()))
        raise ValueError(f"{path} is already decoder-only (its ViT weights are in {files}): "
                         f"there is nothing to remove")


def _frozen_vit_files(skeleton: torch.nn.Module, config: Mapping[str, Any], path: Path
                      ) -> dict[str, tuple[list[str], str]]:
    """Each frozen ViT's keys and the weight file it was loaded from, by module path."""
    sources = {}
    for at in vit_modules(skeleton):
        keys = frozen_keys(skeleton, f"{at}.model.")
        file = _config_at(config, at).get("weights")
        if not keys:
            continue
        if not file:
            raise ValueError(
                f"{at} was not loaded from a file (its weights are null), so its weights "
                f"exist only in {path.name}; a decoder-only export would lose them"
            )
        sources[at] = (keys, str(file))
    return sources


def _refuse_replacing_weights(out: Path, file: str) -> None:
    """``out`` must be neither the DINOv3 file the run loaded nor the one it will need
    beside it (same name in its folder): that file would be gone, and the export useless."""
    what = "the DINOv3 weight file the decoder-only export needs beside it"
    refuse_overwriting(out, out.parent / Path(file).name, what=what)
    refuse_overwriting(out, file, what=what)


def _write(out: Path, contents: dict[str, Any]) -> None:
    """Save ``contents`` to ``out`` whole or not at all; a write that fails is an OSError
    naming ``out``."""
    with write_errors_naming(out), replacing(out) as partial:
        torch.save(contents, partial)
