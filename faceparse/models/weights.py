"""Pretrained backbone weights (DINOv3, VGG-BN) through pure ``state_dict`` filters.

Files come from the internet, so they are read data-only (:mod:`.checkpoint_io`). Loading
is strict: a missing file says where the weights are published and where to put them, a
file for another architecture names the expected and found shapes, and every ignored,
missing or unexpected key is reported through ``logging``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torchvision
from torch import nn

from faceparse.models.checkpoint_io import safe_load

log = logging.getLogger(__name__)

__all__ = [
    "load_state_dict_file",
    "load_strict",
    "vgg_features_filter",
    "vgg_hub_file",
    "load_vgg_weights",
    "dinov3_filter",
    "describe_vit",
    "load_dinov3_weights",
]

StateDict = dict[str, torch.Tensor]

DINOV3_SOURCE = "https://github.com/facebookresearch/dinov3 (Meta licence, request access there)"
VGG_SOURCE = "torchvision's vgg19_bn ImageNet weights (vgg19_bn-c79401a0.pth)"
CHECKPOINT_DIR_HINT = "checkpoints/ (paths.checkpoint_dir in conf/paths/default.yaml)"
# Official file names by width: S/16, B/16, L/16.
DINOV3_FILES = {
    384: ("ViT-S/16", "dinov3_vits16_pretrain_lvd1689m-*.pth"),
    768: ("ViT-B/16", "dinov3_vitb16_pretrain_lvd1689m-*.pth"),
    1024: ("ViT-L/16", "dinov3_vitl16_pretrain_lvd1689m-*.pth"),
}


def load_state_dict_file(
    path: str | Path, what: str, source: str, trust_pickle: bool = False
) -> StateDict:
    """Read a weights file data-only; name the file and where to get it when it is missing."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} weights not found at {path}. Download {source} and put the file there "
            f"(by default in {CHECKPOINT_DIR_HINT}), or point the config at it."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = safe_load(path, trust_pickle=trust_pickle)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` that names shape mismatches, logs and refuses missing/unexpected keys."""
    own = module.state_dict()
    wrong = [
        f"{k}: expected {tuple(own[k].shape)}, found {tuple(v.shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    for kind, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            log.error("%s: %d %s keys: %s", source, len(keys), kind, ", ".join(keys[:20]))
    if wrong or missing or unexpected:
        raise ValueError(
            f"{source} does not fit this model: {len(wrong)} shape mismatches {wrong[:3]}, "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:5]}"
        )
    module.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------- VGG


def vgg_features_filter(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """torchvision VGG keys (``features.<i>.*``) -> keys of our ``layers`` Sequential."""
    return {
        k.removeprefix("features."): v for k, v in state_dict.items() if k.startswith("features.")
    }


def vgg_hub_file(arch: str) -> Path:
    """Where torchvision caches ``arch``'s ImageNet weights (e.g. ``vgg19_bn-c79401a0.pth``)."""
    url = torchvision.models.get_model_weights(arch).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def load_vgg_weights(layers: nn.Module, path: str | Path) -> None:
    """Load torchvision VGG ImageNet weights into the (possibly truncated) feature layers."""
    state = vgg_features_filter(load_state_dict_file(path, "VGG", VGG_SOURCE))
    own = layers.state_dict()
    beyond = sorted(set(state) - set(own), key=lambda k: int(k.split(".")[0]))
    if beyond:
        log.info("%s: ignoring %d keys of layers beyond the last stage (%s..)",
                 path, len(beyond), beyond[0])
    load_strict(layers, {k: v for k, v in state.items() if k in own}, f"VGG weights {path}")
    log.info("loaded VGG weights from %s", path)


# --------------------------------------------------------------------------- DINOv3


def dinov3_filter(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> StateDict:
    """Meta's official or timm's DINOv3 keys -> the timm ViT's keys.

    timm's ``eva.checkpoint_filter_fn`` does the renaming (``ls1.gamma`` -> ``gamma_1``,
    storage -> register tokens, ``qkv.bias`` -> query/value biases; the key bias is dropped
    because softmax cancels it). timm's own bias-free conversion has no query/value biases:
    they are zero by construction, so zeros are filled in.
    """
    from timm.models.eva import checkpoint_filter_fn

    state = checkpoint_filter_fn(dict(state_dict), model)
    own = model.state_dict()
    missing = set(own) - set(state)
    bias_free = not any(k.endswith(".q_bias") for k in state)
    if missing and bias_free and all(k.endswith((".q_bias", ".v_bias")) for k in missing):
        log.info("bias-free DINOv3 weights: setting %d query/value biases to 0", len(missing))
        state.update({k: torch.zeros_like(own[k]) for k in missing})
    return state


def describe_vit(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``ViT-B/16 (width 768, 12 blocks)`` for a DINOv3 state dict, in any key naming."""
    width = state_dict["cls_token"].shape[-1]
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    name = DINOV3_FILES.get(width, (f"{width}-wide ViT",))[0]
    return f"{name} (width {width}, {len(blocks)} blocks)"


def _check_dinov3(state: Mapping[str, torch.Tensor], model: nn.Module, path: Path) -> None:
    """Refuse files that are no DINOv3 ViT, or use another RoPE, before renaming keys."""
    if "cls_token" not in state or not ({"storage_tokens", "reg_token"} & set(state)):
        sample = ", ".join(list(state)[:4])
        raise ValueError(
            f"{path} is not a DINOv3 ViT checkpoint (no cls_token and storage/register tokens; "
            f"its first keys are {sample}). Use an official {DINOV3_FILES[1024][1]}-style file "
            f"from {DINOV3_SOURCE} or timm's converted DINOv3 weights."
        )
    periods, ours = state.get("rope_embed.periods"), model.rope.periods
    if periods is not None and periods.shape == ours.shape and not torch.allclose(periods, ours):
        raise ValueError(f"{path}: its RoPE periods differ from timm's DINOv3 (another RoPE base?)")


def load_dinov3_weights(model: nn.Module, path: str | Path) -> None:
    """Load Meta's official DINOv3 checkpoint (or timm's ``.safetensors``) into a timm ViT."""
    path = Path(path).expanduser()
    size, pattern = DINOV3_FILES.get(model.embed_dim, ("DINOv3", "dinov3_vit*16_*.pth"))
    state = load_state_dict_file(path, f"DINOv3 {size}", f"{pattern} from {DINOV3_SOURCE}")
    _check_dinov3(state, model, path)
    found = describe_vit(state)
    expected = describe_vit({"cls_token": model.cls_token, **model.state_dict()})
    try:
        load_strict(model, dinov3_filter(state, model), f"DINOv3 weights {path}")
    except ValueError as error:
        raise ValueError(
            f"the file holds a {found}, this encoder is a {expected} (set encoder.vit.size to "
            f"match the file, or use {pattern}). {error}"
        ) from None
    log.info("loaded DINOv3 %s weights from %s", found, path)
