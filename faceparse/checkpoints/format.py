"""Our checkpoint format: the metadata that rebuilds a net, and the one way to build it.

A faceparse checkpoint is a Lightning file with a ``faceparse`` entry: the resolved net
config, the label scheme and its class names, so predict/eval need only the path. Nets
are built from config by :func:`build_face_parser` (training, through Hydra) or
:func:`build_net` (a checkpoint's config); either way the net keeps its config in
``net.config``, so every checkpoint written from it can rebuild it.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from faceparse.checkpoints.trust import check_net_config, model_class
from faceparse.instantiation import instantiate_option
from faceparse.labels import LabelScheme, get_scheme
from faceparse.models import DinoVitEncoder, FaceParser
from faceparse.nested import flatten

log = logging.getLogger(__name__)

__all__ = [
    "META_KEY",
    "NET_PREFIX",
    "NET_TARGET",
    "checkpoint_metadata",
    "scheme_from_metadata",
    "build_face_parser",
    "build_net",
    "fingerprint",
    "vit_modules",
    "frozen_keys",
]

META_KEY = "faceparse"
META_VERSION = 1
NET_PREFIX = "net."  # the LightningModule's attribute holding the FaceParser
NET_TARGET = "faceparse.models.FaceParser"


def checkpoint_metadata(net_config: Mapping[str, Any] | None, scheme: LabelScheme,
                        image_size: int | None = None) -> dict:
    """What a checkpoint needs to rebuild its model, name its classes and size its input.

    ``image_size`` is the square side the model was trained at (``None`` when unknown);
    inference runs at it by default.
    """
    return {
        "version": META_VERSION,
        "model": copy.deepcopy(dict(net_config)) if net_config is not None else None,
        "labels": scheme.name,
        "class_names": list(scheme.class_names),
        "image_size": image_size,
    }


def scheme_from_metadata(meta: Mapping[str, Any]) -> LabelScheme:
    """The scheme a checkpoint names; its own class names when the name is unknown here."""
    names = tuple(meta["class_names"])
    try:
        scheme = get_scheme(meta["labels"])
    except KeyError:
        scheme = None
    if scheme is not None and scheme.class_names == names:
        return scheme
    log.warning("unknown label scheme %r: using the checkpoint's class names", meta["labels"])
    return LabelScheme(str(meta["labels"]), names)


def _plain(config: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(config, DictConfig):
        return OmegaConf.to_container(config, resolve=True)
    return copy.deepcopy(dict(config))


def _instantiate(config: dict[str, Any]) -> FaceParser:
    net = instantiate_option(OmegaConf.create(config))  # a missing ViT file: its own error
    if not isinstance(net, FaceParser):
        raise TypeError(f"the net config builds a {type(net).__name__}, not a FaceParser")
    return net


def build_face_parser(encoder: Mapping[str, Any], decoder: Mapping[str, Any],
                      num_classes: int) -> FaceParser:
    """Build the net from its parts' configs and keep the whole config in ``net.config``.

    The training config's ``model.net`` (Hydra target, ``_recursive_: false``): whatever
    builds the LightningModule from config, its checkpoints rebuild the net.
    """
    config = {"_target_": NET_TARGET, "encoder": _plain(encoder), "decoder": _plain(decoder),
              "num_classes": int(num_classes)}
    net = _instantiate(copy.deepcopy(config))
    net.config = config
    return net


def _set_weights(node: Any, paths: Mapping[str, str | None], at: str = "") -> None:
    """Point each encoder's ``weights`` at ``paths[module path]`` (None: no file to load).

    A ViT without a file is marked ``random_init``: the checkpoint's state dict fills it.
    """
    if isinstance(node, dict):
        if "weights" in node:
            node["weights"] = paths.get(at)
            node.pop("pretrained", None)
            cls = model_class(node.get("_target_"))
            if cls is not None and issubclass(cls, DinoVitEncoder):
                node["random_init"] = node["weights"] is None
        for key, child in node.items():
            _set_weights(child, paths, f"{at}.{key}" if at else key)


def build_net(net_config: Mapping[str, Any], weights: Mapping[str, str | None] | None = None,
              source: str = "the net config") -> FaceParser:
    """Instantiate a checkpoint's net config; pretrained files only where ``weights`` says.

    ``weights`` maps module paths (``encoder.vit``) to files; every other encoder starts
    empty because the checkpoint's state dict fills it. The config comes from a file, so
    it is checked before anything is built (:func:`~faceparse.checkpoints.trust.
    check_net_config`: faceparse model classes only; ``source`` names the file).
    """
    config = (OmegaConf.to_container(net_config, resolve=False)  # resolvers run no code
              if isinstance(net_config, DictConfig) else copy.deepcopy(net_config))
    check_net_config(config, source)
    config = dict(config)
    built = copy.deepcopy(config)
    _set_weights(built, weights or {})
    net = _instantiate(built)
    net.config = config
    return net


def vit_modules(net: nn.Module) -> dict[str, DinoVitEncoder]:
    """The net's DINOv3 encoders by module path (``encoder.vit``)."""
    return {name: m for name, m in net.named_modules() if isinstance(m, DinoVitEncoder)}


def frozen_keys(net: nn.Module, prefix: str) -> list[str]:
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


# where the weights come from, not what the net computes: a checkpoint's own weights replace them
_WEIGHT_SOURCES = frozenset({"weights", "pretrained", "random_init"})


def config_differences(saved: Mapping[str, Any], built: Mapping[str, Any]) -> list[str]:
    """``key: saved -> built`` for each net option a checkpoint was saved with that differs
    from the net it goes into (where the weights come from left out). Options that keep
    every shape (``encoder.vit.layers``, a fusion's mode) load without a word otherwise."""
    old, new = flatten(saved), flatten(built)  # a file's ${...} stays text, never resolved
    return [f"{key}: {old.get(key, '(unset)')!r} -> {new.get(key, '(unset)')!r}"
            for key in sorted(set(old) | set(new))
            if key.rsplit(".", 1)[-1] not in _WEIGHT_SOURCES and old.get(key) != new.get(key)]
