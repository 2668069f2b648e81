"""Loading outside weights into our encoders through pure ``state_dict`` filters.

Files come from the internet, so they are read with ``torch.load(weights_only=True)``.
A missing file is a clear error saying where the official weights are published.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["load_state_dict_file", "vgg_features_filter", "load_vgg_weights", "load_dinov3_weights"]

DINOV3_SOURCE = "https://github.com/facebookresearch/dinov3 (Meta licence, request access there)"
VGG_SOURCE = "torchvision's vgg19_bn ImageNet weights (vgg19_bn-c79401a0.pth)"


def load_state_dict_file(path: str | Path, what: str, source: str) -> dict[str, torch.Tensor]:
    """Read a weights file safely; name the file and where to get it when it is missing."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} weights not found at {path}. Download {source} and put the file there "
            f"(or point the config at it)."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def vgg_features_filter(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision VGG keys (``features.<i>.*``) -> keys of our ``layers`` Sequential."""
    return {
        k.removeprefix("features."): v for k, v in state_dict.items() if k.startswith("features.")
    }


def load_vgg_weights(layers: nn.Module, path: str | Path) -> None:
    """Load torchvision VGG ImageNet weights into the (possibly truncated) feature layers."""
    state = vgg_features_filter(load_state_dict_file(path, "VGG", VGG_SOURCE))
    own = layers.state_dict()
    state = {k: v for k, v in state.items() if k in own}
    missing = sorted(set(own) - set(state))
    if missing:
        raise ValueError(f"{path}: not a torchvision VGG-BN checkpoint, missing {missing[:5]}")
    layers.load_state_dict(state)
    log.info("loaded VGG weights from %s", path)


def load_dinov3_weights(model: nn.Module, path: str | Path) -> None:
    """Load Meta's official DINOv3 checkpoint (or timm's converted one) into a timm ViT."""
    from timm.models.eva import checkpoint_filter_fn

    state = checkpoint_filter_fn(load_state_dict_file(path, "DINOv3", DINOV3_SOURCE), model)
    own = model.state_dict()
    wrong = [
        f"{k}: expected {tuple(own[k].shape)}, found {tuple(v.shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if wrong:
        raise ValueError(f"{path} does not fit this ViT: " + "; ".join(wrong[:3]))
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path} does not fit this ViT: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    log.info("loaded DINOv3 weights from %s", path)
