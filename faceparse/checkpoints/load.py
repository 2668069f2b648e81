"""Checkpoints in, face parsers out: ours (full or decoder-only) and the original project's.

A decoder-only export has no frozen DINOv3 weights (they equal the official file) and
records a fingerprint of them, so loading it beside that file gives exactly the full
checkpoint's model. The original project's files are mapped onto our module names.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from faceparse.checkpoints.format import (
    NET_PREFIX,
    build_net,
    fingerprint,
    scheme_from_metadata,
    vit_modules,
)
from faceparse.checkpoints.original import (
    VIT_PREFIX,
    original_net_config,
    original_scheme,
    original_to_faceparse,
)
from faceparse.checkpoints.read import CheckpointFile, read_checkpoint
from faceparse.labels import LabelScheme
from faceparse.models import DinoVitEncoder, FaceParser
from faceparse.models.dinov3_weights import DINOV3_FILES, DINOV3_SOURCE
from faceparse.models.weights import folder_message, load_strict

log = logging.getLogger(__name__)

__all__ = ["check_vit_weights", "load_face_parser", "load_net_weights", "refuse_other_labels",
           "warn_unused_vit_weights", "weight_files_read"]

Checkpoint = str | Path | CheckpointFile


def _read(checkpoint: Checkpoint, trust_pickle: bool) -> CheckpointFile:
    if isinstance(checkpoint, CheckpointFile):
        return checkpoint
    return read_checkpoint(checkpoint, trust_pickle)


def _find_vit_file(ckpt_path: Path, name: str | None, width: int, given: str | Path | None
                   ) -> Path:
    """The DINOv3 file a checkpoint without ViT weights needs: given, or beside it."""
    if given is not None:
        return Path(given)
    pattern = name or DINOV3_FILES.get(width, ("", "dinov3_vit*16_*.pth"))[1]
    if name:  # a recorded file name (checked to be a plain name), not a pattern
        found = [f for f in (ckpt_path.parent / Path(name).name,) if f.is_file()]
    else:
        found = sorted(ckpt_path.parent.glob(pattern))
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(
        f"{ckpt_path} holds no DINOv3 weights; it needs {pattern} from {DINOV3_SOURCE} "
        f"beside it in {ckpt_path.parent} ({len(found)} found there), or pass vit_weights="
    )


def weight_files_read(checkpoint: CheckpointFile, vit_weights: str | Path | None = None
                      ) -> list[Path]:
    """The DINOv3 files :func:`load_face_parser` reads for ``checkpoint``, found without
    building anything: a command writing a file checks it is none of them first."""
    return list(_vit_files(checkpoint, vit_weights).values())


def _vit_files(ckpt: CheckpointFile, vit_weights: str | Path | None) -> dict[str, Path]:
    """The DINOv3 file each ViT the checkpoint does not carry loads from, by module path.

    The original project's file without ``encoder.dinov3.*`` weights (its ``decoder.ckpt``)
    names no file: the ViT is the one whose width its decoder takes. Our decoder-only exports
    name theirs."""
    if ckpt.original:
        state = ckpt.state_dict
        if any(k.startswith(VIT_PREFIX) for k in state):
            return {}
        width = state["decoder.adapt_scale16.conv.weight"].shape[1]
        return {"encoder.vit": _find_vit_file(ckpt.path, None, width, vit_weights)}
    external = (ckpt.metadata or {}).get("decoder_only", {}).get("external", {})
    return {at: _find_vit_file(ckpt.path, spec["file"], 0, vit_weights)
            for at, spec in external.items()}


def load_face_parser(
    checkpoint: Checkpoint, vit_weights: str | Path | None = None, trust_pickle: bool = False
) -> tuple[FaceParser, LabelScheme]:
    """Any supported checkpoint -> an eval-mode :class:`FaceParser` and its label scheme.

    Ours (full or decoder-only) rebuild from their stored config; the original project's
    from their weight shapes. Files without ViT weights need the DINOv3 file
    (``vit_weights``, or found beside the checkpoint); a ``vit_weights`` that is no file is
    refused, and one a checkpoint holding its ViT does not need is not read, with a warning.
    """
    vit_weights = check_vit_weights(vit_weights)
    ckpt = _read(checkpoint, trust_pickle)
    if ckpt.original:
        net, scheme = _load_original(ckpt, vit_weights)
    else:
        net, scheme = _load_ours(ckpt, vit_weights)
    if not any(vit.weights_file for vit in vit_modules(net).values()):
        warn_unused_vit_weights(vit_weights, ckpt.path)
    return net.eval(), scheme


def check_vit_weights(vit_weights: object) -> str | None:
    """A ``vit_weights=`` that is no file is refused before any checkpoint is read (a
    folder: the file in it is meant); every command and the Python API refuse alike."""
    if vit_weights is None:
        return None
    path = Path(str(vit_weights)).expanduser()
    if path.is_dir():
        raise FileNotFoundError(f"vit_weights={vit_weights}: "
                                + folder_message(path, "the DINOv3 weight file", "vit_weights=",
                                               "dinov3_*"))
    if not path.is_file():
        raise FileNotFoundError(f"vit_weights={vit_weights}: no such file; give the DINOv3 "
                                f"file a checkpoint without ViT weights needs, or leave it out")
    return str(path)


def warn_unused_vit_weights(vit_weights: str | None, ckpt: Path) -> None:
    """A ``vit_weights=`` the checkpoint does not need (it holds its ViT) is not read: say
    so, or a user trying another DINOv3 file gets the old ViT's outputs without a word."""
    if vit_weights is not None:
        log.warning("vit_weights=%s is not used: %s reads no DINOv3 file (it holds its own "
                    "ViT weights, which are used instead, or has no ViT)", vit_weights, ckpt)


def _load_ours(ckpt: CheckpointFile, vit_weights: str | Path | None
               ) -> tuple[FaceParser, LabelScheme]:
    meta = ckpt.metadata or {}
    if not meta.get("model"):
        raise ValueError(f"{ckpt.path} has no model config (its net was not built from a "
                         f"config, e.g. by faceparse.train), so it cannot be rebuilt")
    external = meta.get("decoder_only", {}).get("external", {})
    files = {at: str(path) for at, path in _vit_files(ckpt, vit_weights).items()}
    net = build_net(meta["model"], files, str(ckpt.path))
    state = {k.removeprefix(NET_PREFIX): v for k, v in ckpt.state_dict.items()}
    own = net.state_dict()
    for at, spec in external.items():
        state.update(_check_fingerprint(ckpt, files[at], own, spec))
    load_strict(net, state, f"checkpoint {ckpt.path}")
    return net, scheme_from_metadata(meta)


def _load_original(ckpt: CheckpointFile, vit_weights: str | Path | None
                   ) -> tuple[FaceParser, LabelScheme]:
    state = ckpt.state_dict
    config = original_net_config(state)
    files = {at: str(path) for at, path in _vit_files(ckpt, vit_weights).items()}
    net = build_net(config, files, str(ckpt.path))
    mapped = original_to_faceparse(state, net.encoder.vit.model, ckpt.path)
    if files:  # the file has no ViT weight: the net's, loaded from the DINOv3 file
        mapped.update({k: v for k, v in net.state_dict().items() if k.startswith("encoder.vit.")})
    load_strict(net, mapped, f"original FaceParsing checkpoint {ckpt.path}")
    log.info("loaded the original project's %d-class checkpoint %s", config["num_classes"],
             ckpt.path)
    return net, original_scheme(config["num_classes"])


def load_net_weights(
    net: nn.Module, checkpoint: Checkpoint, scheme: LabelScheme, trust_pickle: bool = False
) -> None:
    """Initialise an already built net from any supported checkpoint (weights only).

    ``scheme`` is the run's label scheme: a checkpoint predicting another class order is
    refused even when the class counts agree. ViT weights the file lacks (decoder-only or
    the original ``decoder.ckpt``) stay as the net loaded them from ``vit.weights``.
    """
    ckpt = _read(checkpoint, trust_pickle)
    if ckpt.original:
        theirs = original_scheme(ckpt.state_dict["decoder.final_conv.2.weight"].shape[0])
        vit = vit_modules(net).get("encoder.vit")
        if vit is None:
            raise ValueError(f"{ckpt.path} is the original FaceParsing model (VGG and DINOv3 "
                             f"ViT encoders), and this run's net has no ViT encoder at "
                             f"encoder.vit: it needs encoder=dual (with the same vit.size)")
        state = original_to_faceparse(ckpt.state_dict, vit.model, ckpt.path)
    else:
        theirs = scheme_from_metadata(ckpt.metadata) if ckpt.metadata else scheme
        state = {k.removeprefix(NET_PREFIX): v for k, v in ckpt.state_dict.items()}
    refuse_other_labels(ckpt.path, theirs, scheme)
    own = net.state_dict()
    kept = _kept_vit_weights(ckpt, net, state, own)
    if kept:
        log.info("%s has no ViT weights: keeping the %d the model loaded", ckpt.path, len(kept))
    load_strict(net, {**state, **kept}, f"checkpoint {ckpt.path}")


def _kept_vit_weights(ckpt: CheckpointFile, net: nn.Module, state: dict[str, torch.Tensor],
                      own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ViT weights the file lacks, from the net (which loaded them from
    ``vit.weights``): the frozen ones a decoder-only export left out (the blocks a
    ``vit.finetune_blocks`` run trained stay in the file and come from it), or all of a
    ViT the file has no weight of (the original project's ``decoder.ckpt``)."""
    external = (ckpt.metadata or {}).get("decoder_only", {}).get("external", {})
    kept: dict[str, torch.Tensor] = {}
    for at, vit in vit_modules(net).items():
        spec = external.get(at)
        if spec is not None:
            keys = [k for k in spec["keys"] if k not in state]
        elif not any(k.startswith(f"{at}.") for k in state):
            keys = [k for k in own if k.startswith(f"{at}.")]
        else:
            continue
        as_trained = _check_kept_vit(ckpt, at, vit, own, spec)
        kept.update({k: as_trained.get(k, own.get(k)) for k in keys if k in own})
    return kept


def refuse_other_labels(path: Path, theirs: LabelScheme, scheme: LabelScheme) -> None:
    """A checkpoint predicting another class order than the run's would score (or train)
    every class as another one without a word: refuse it, even when the counts agree."""
    if theirs.class_names != scheme.class_names:
        raise ValueError(
            f"{path} predicts the {theirs.name!r} classes {theirs.class_names}, but this "
            f"run's data.labels is {scheme.name!r}: set data.labels={theirs.name}"
        )


def _check_kept_vit(ckpt: CheckpointFile, at: str, vit: DinoVitEncoder,
                    own: dict[str, torch.Tensor], spec: dict | None) -> dict[str, torch.Tensor]:
    """A file without ViT weights needs the run's ViT to hold the ones it was trained with;
    returns those the export left out, as the run trained with them."""
    if vit.weights_file is None:
        raise ValueError(
            f"{ckpt.path} holds no weights for {at}, and this run's ViT has none either "
            f"(vit.random_init=true): set vit.weights=<the DINOv3 file it was trained with, "
            f"{spec['file'] if spec else 'dinov3_vit*16_pretrain_lvd1689m-*.pth'}> "
            f"from {DINOV3_SOURCE}"
        )
    return _check_fingerprint(ckpt, vit.weights_file, own, spec) if spec else {}


def _check_fingerprint(ckpt: CheckpointFile, file: str, own: dict[str, torch.Tensor],
                       spec: dict) -> dict[str, torch.Tensor]:
    """The frozen weights loaded from ``file`` are those the decoder-only export left out;
    returns them as the run trained with them (rounded to bf16 when it stored its frozen ViT
    so, ``rounded_to``), so the file gives exactly the full checkpoint's outputs."""
    missing = [k for k in spec["keys"] if k not in own]
    if missing:
        raise ValueError(
            f"{ckpt.path} was trained with a ViT that has {missing[0]} (and {len(missing) - 1} "
            f"more weights this model lacks): set the vit options (vit.size, vit.layers) "
            f"it was trained with"
        )
    weights = {k: own[k] for k in spec["keys"]}
    if spec.get("rounded_to") == "bfloat16":
        weights = {k: v.to(torch.bfloat16).to(v.dtype) if v.is_floating_point() else v
                   for k, v in weights.items()}
    if fingerprint(weights) != spec["sha256"]:
        raise ValueError(
            f"{file} is not the DINOv3 file {ckpt.path.name} was trained with "
            f"({spec['file']}): its frozen weights differ"
        )
    return weights
