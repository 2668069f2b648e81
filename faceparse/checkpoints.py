"""Checkpoints in, face parsers out: our Lightning files, decoder-only exports, and the
original FaceParsing project's files.

Our checkpoints carry a ``faceparse`` entry (the resolved ``model.net`` config, the label
scheme and its class names), so predict/eval need only the path. A decoder-only export
drops the frozen DINOv3 weights (they equal the official file) and records a fingerprint
of them, so loading it beside that file gives exactly the full checkpoint's model.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from faceparse.labels import LabelScheme, get_scheme
from faceparse.models import DinoVitEncoder, FaceParser
from faceparse.models.checkpoint_io import safe_load
from faceparse.models.weights import DINOV3_FILES, DINOV3_SOURCE, load_strict
from faceparse.original_project import (
    is_original_checkpoint,
    original_net_config,
    original_scheme,
    original_to_faceparse,
)

log = logging.getLogger(__name__)

__all__ = [
    "META_KEY",
    "checkpoint_metadata",
    "build_net",
    "load_face_parser",
    "load_net_weights",
    "is_resumable",
    "export_decoder_only",
    "rng_states",
    "set_rng_states",
]

META_KEY = "faceparse"
META_VERSION = 1
NET_PREFIX = "net."
# Only our model classes may be named by a checkpoint's config: instantiating an
# arbitrary ``_target_`` from a downloaded file would run arbitrary code.
ALLOWED_TARGET_PREFIX = "faceparse.models."


def checkpoint_metadata(net_config: Mapping[str, Any] | None, scheme: LabelScheme) -> dict:
    """What a checkpoint needs to rebuild its model and name its classes."""
    return {
        "version": META_VERSION,
        "model": copy.deepcopy(dict(net_config)) if net_config is not None else None,
        "labels": scheme.name,
        "class_names": list(scheme.class_names),
    }


def _scheme(meta: Mapping[str, Any]) -> LabelScheme:
    names = tuple(meta["class_names"])
    try:
        scheme = get_scheme(meta["labels"])
    except KeyError:
        scheme = None
    if scheme is not None and scheme.class_names == names:
        return scheme
    log.warning("unknown label scheme %r: using the checkpoint's class names", meta["labels"])
    return LabelScheme(str(meta["labels"]), names)


def _targets(node: Any) -> list[str]:
    if isinstance(node, Mapping):
        own = [node["_target_"]] if "_target_" in node else []
        return own + [t for v in node.values() for t in _targets(v)]
    if isinstance(node, list):
        return [t for v in node for t in _targets(v)]
    return []


def _set_weights(node: Any, paths: Mapping[str, str | None], at: str = "") -> None:
    """Point each encoder's ``weights`` at ``paths[module path]`` (None: no file to load)."""
    if isinstance(node, dict):
        if "weights" in node:
            node["weights"] = paths.get(at)
            node.pop("pretrained", None)
        for key, child in node.items():
            _set_weights(child, paths, f"{at}.{key}" if at else key)


def build_net(net_config: Mapping[str, Any], weights: Mapping[str, str | None] | None = None
              ) -> FaceParser:
    """Instantiate a ``model.net`` config; pretrained files only where ``weights`` says.

    ``weights`` maps module paths (``encoder.vit``) to files; every other encoder starts
    empty because the checkpoint's state dict fills it.
    """
    config = copy.deepcopy(dict(net_config))
    bad = [t for t in _targets(config) if not str(t).startswith(ALLOWED_TARGET_PREFIX)]
    if bad:
        raise ValueError(f"refusing to build {bad}: a checkpoint may only name faceparse models")
    _set_weights(config, weights or {})
    return instantiate(OmegaConf.create(config))


def _vit_modules(net: nn.Module) -> dict[str, DinoVitEncoder]:
    return {name: m for name, m in net.named_modules() if isinstance(m, DinoVitEncoder)}


def _frozen_keys(net: nn.Module, prefix: str) -> list[str]:
    """State keys under ``prefix`` whose parameters never train (they equal their file)."""
    return [n for n, p in net.named_parameters() if n.startswith(prefix) and not p.requires_grad]


def fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes: proves a file gives the same weights."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _find_vit_file(ckpt_path: Path, name: str | None, width: int, given: str | Path | None
                   ) -> Path:
    """The DINOv3 file a checkpoint without ViT weights needs: given, or beside it."""
    if given is not None:
        return Path(given)
    pattern = name or DINOV3_FILES.get(width, ("", "dinov3_vit*16_*.pth"))[1]
    found = sorted(ckpt_path.parent.glob(pattern))
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(
        f"{ckpt_path} holds no DINOv3 weights; it needs {pattern} from {DINOV3_SOURCE} "
        f"beside it in {ckpt_path.parent} ({len(found)} found there), or pass vit_weights="
    )


def _read(ckpt_path: str | Path, trust_pickle: bool) -> tuple[Path, dict, dict]:
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = safe_load(path, trust_pickle=trust_pickle)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), Mapping):
        raise ValueError(f"{path} is not a Lightning checkpoint (no state_dict)")
    return path, ckpt, dict(ckpt["state_dict"])


def load_face_parser(
    ckpt_path: str | Path, vit_weights: str | Path | None = None, trust_pickle: bool = False
) -> tuple[FaceParser, LabelScheme]:
    """Any supported checkpoint -> an eval-mode :class:`FaceParser` and its label scheme.

    Ours (full or decoder-only) rebuild from their stored config; the original project's
    from their weight shapes. Files without ViT weights need the DINOv3 file
    (``vit_weights``, or found beside the checkpoint).
    """
    path, ckpt, state = _read(ckpt_path, trust_pickle)
    if META_KEY in ckpt:
        net, scheme = _load_ours(path, ckpt, state, vit_weights)
    elif is_original_checkpoint(state):
        net, scheme = _load_original(path, state, vit_weights)
    else:
        raise ValueError(
            f"{path} is neither a faceparse checkpoint nor one of the original FaceParsing "
            f"project's (keys like {list(state)[:3]})"
        )
    return net.eval(), scheme


def _load_ours(path: Path, ckpt: dict, state: dict, vit_weights: str | Path | None
               ) -> tuple[FaceParser, LabelScheme]:
    meta = ckpt[META_KEY]
    if not meta.get("model"):
        raise ValueError(f"{path} has no model config (it was not written by faceparse.train)")
    external = meta.get("decoder_only", {}).get("external", {})
    files = {
        at: str(_find_vit_file(path, spec["file"], 0, vit_weights)) for at, spec in external.items()
    }
    net = build_net(meta["model"], files)
    state = {k.removeprefix(NET_PREFIX): v for k, v in state.items()}
    own = net.state_dict()
    for at, spec in external.items():
        frozen = {k: own[k] for k in spec["keys"]}
        if fingerprint(frozen) != spec["sha256"]:
            raise ValueError(
                f"{files[at]} is not the DINOv3 file {path.name} was trained with "
                f"({spec['file']}): its frozen weights differ"
            )
        state.update(frozen)
    load_strict(net, state, f"checkpoint {path}")
    return net, _scheme(meta)


def _load_original(path: Path, state: dict, vit_weights: str | Path | None
                   ) -> tuple[FaceParser, LabelScheme]:
    config = original_net_config(state)
    has_vit = any(k.startswith("encoder.dinov3.") for k in state)
    width = state["decoder.adapt_scale16.conv.weight"].shape[1]
    files = {} if has_vit else {"encoder.vit": str(_find_vit_file(path, None, width, vit_weights))}
    net = build_net(config, files)
    mapped = original_to_faceparse(state, net.encoder.vit.model)
    if not has_vit:
        mapped.update({k: v for k, v in net.state_dict().items() if k.startswith("encoder.vit.")})
    load_strict(net, mapped, f"original FaceParsing checkpoint {path}")
    log.info("loaded the original project's %d-class checkpoint %s", config["num_classes"], path)
    return net, original_scheme(config["num_classes"])


def load_net_weights(
    net: nn.Module, ckpt_path: str | Path, scheme: LabelScheme, trust_pickle: bool = False
) -> None:
    """Initialise an already built net from any supported checkpoint (weights only).

    ``scheme`` is the run's label scheme: a checkpoint predicting another class order is
    refused even when the class counts agree. ViT weights the file lacks (decoder-only or
    the original ``decoder.ckpt``) stay as the net loaded them from ``encoder.vit.weights``.
    """
    path, ckpt, state = _read(ckpt_path, trust_pickle)
    if is_original_checkpoint(state):
        theirs = original_scheme(state["decoder.final_conv.2.weight"].shape[0])
        state = original_to_faceparse(state, _vit_modules(net)["encoder.vit"].model)
    else:
        theirs = _scheme(ckpt[META_KEY]) if META_KEY in ckpt else scheme
        state = {k.removeprefix(NET_PREFIX): v for k, v in state.items()}
    if theirs.class_names != scheme.class_names:
        raise ValueError(
            f"{path} predicts the {theirs.name!r} classes {theirs.class_names}, but this run's "
            f"data.labels is {scheme.name!r}: set data.labels={theirs.name}"
        )
    own = net.state_dict()
    vits = [f"{at}." for at in _vit_modules(net)]
    absent = [p for p in vits if not any(k.startswith(p) for k in state)]
    kept = {k: v for k, v in own.items() if k.startswith(tuple(absent))}
    if kept:
        log.info("%s has no ViT weights: keeping the %d the model loaded", path, len(kept))
    load_strict(net, {**state, **kept}, f"checkpoint {path}")


def is_resumable(ckpt_path: str | Path, trust_pickle: bool = False) -> bool:
    """A full checkpoint of our LightningModule (optimizer and loop states included)."""
    _, ckpt, state = _read(ckpt_path, trust_pickle)
    ours = all(k.startswith(NET_PREFIX) for k in state)
    return ours and "optimizer_states" in ckpt and "loops" in ckpt


def export_decoder_only(
    ckpt_path: str | Path, out_path: str | Path, trust_pickle: bool = False
) -> dict[str, Any]:
    """Write ``ckpt_path`` without its frozen DINOv3 weights; return what was removed."""
    path, ckpt, state = _read(ckpt_path, trust_pickle)
    meta = ckpt.get(META_KEY) or {}
    if not meta.get("model"):
        raise ValueError(f"{path} has no faceparse model config; export needs one")
    with torch.device("meta"):
        skeleton = build_net(meta["model"])
    external, removed = {}, set()
    for at in _vit_modules(skeleton):
        keys = _frozen_keys(skeleton, f"{at}.model.")
        file = _config_at(meta["model"], at).get("weights")
        if not keys:
            continue
        if not file:
            raise ValueError(
                f"{at} was not loaded from a file (its weights are null), so its weights "
                f"exist only in {path.name}; a decoder-only export would lose them"
            )
        tensors = {k: state[NET_PREFIX + k] for k in keys}
        external[at] = {"file": Path(file).name, "keys": keys, "sha256": fingerprint(tensors)}
        removed.update(NET_PREFIX + k for k in keys)
    kept = {k: v for k, v in state.items() if k not in removed}
    out = Path(out_path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "source": str(path),
        "removed_keys": len(removed),
        "removed_params": sum(state[k].numel() for k in removed),
        "removed_modules": sorted(f"{NET_PREFIX}{at}.model" for at in external),
        "kept_keys": len(kept),
        "needs_beside_it": sorted(spec["file"] for spec in external.values()),
        "dropped_entries": sorted(k for k in ckpt if k not in ("state_dict", META_KEY)),
    }
    export_meta = {**meta, "decoder_only": {"external": external, "report": report}}
    torch.save({META_KEY: export_meta, "state_dict": kept}, out)
    report.update(size_before=path.stat().st_size, size_after=out.stat().st_size)
    return report


def _config_at(config: Mapping[str, Any], at: str) -> Mapping[str, Any]:
    for key in at.split("."):
        config = config[key]
    return config


def rng_states() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as plain data (loadable with ``weights_only``)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_states` captured, so a resumed run draws the same numbers."""
    random.setstate(states["python"])
    n = states["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
