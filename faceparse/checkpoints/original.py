"""The original FaceParsing project's checkpoints: recognise them, map their keys, rebuild
the model they describe.

Its ``decoder.ckpt`` (Lightning format, ViT removed) and ``last.ckpt`` name the VGG
branch ``encoder.cnn.layers.<i>`` and the decoder ``decoder.<module>`` exactly as our
:class:`~faceparse.models.FaceParser` does; its full ``last.ckpt`` also holds the ViT
under ``encoder.dinov3.*`` in Meta's official key names. The architecture is not stored,
so it is read off the weight shapes. The 11-class variant (ViT-L/16) predicts the
``ourface`` order, the 19-class one (ViT-B/16) the FaceSynthetics order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from faceparse.labels import LabelScheme, get_scheme
from faceparse.models.dinov3_weights import check_dinov3, dinov3_filter

log = logging.getLogger(__name__)

__all__ = [
    "MODULE_MAP",
    "REQUIRED_KEYS",
    "check_original_keys",
    "is_original_checkpoint",
    "original_net_config",
    "original_scheme",
    "original_to_faceparse",
    "VIT_SIZES",
]

# Their module prefix -> ours. Identity where the names already agree (by design).
MODULE_MAP = {
    "encoder.cnn.": "encoder.cnn.",
    "decoder.": "decoder.",
    "encoder.dinov3.": "encoder.vit.model.",
}
VIT_PREFIX = "encoder.dinov3."
VIT_SIZES = {384: "small", 768: "base", 1024: "large"}
SCHEMES_BY_CLASSES = {11: "ourface", 19: "facesynthetics"}
# The keys whose shapes give the architecture (ViT width, decoder width, class count).
REQUIRED_KEYS = (
    "decoder.adapt_scale16.conv.weight",
    "decoder.adapt_scale8.conv.weight",
    "decoder.final_conv.2.weight",
)


def is_original_checkpoint(state_dict: Mapping[str, Any]) -> bool:
    """Keys of its FaceParsing module (no ``net.`` prefix, VGG in ``encoder.cnn.layers``)."""
    return "decoder.adapt_scale16.conv.weight" in state_dict and any(
        k.startswith("encoder.cnn.layers.") for k in state_dict
    )


def check_original_keys(state_dict: Mapping[str, Any], path: object) -> None:
    """Refuse a file in the original layout that lacks the keys its architecture is read
    from (a partial or truncated save), naming them, rather than failing on one of them."""
    missing = [k for k in REQUIRED_KEYS if k not in state_dict]
    if missing:
        raise ValueError(f"{path} looks like an original FaceParsing checkpoint but lacks "
                         f"{', '.join(missing)} (an incomplete file?)")


def original_net_config(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Our ``model.net`` config for the architecture its weight shapes describe."""
    vit_width = state_dict["decoder.adapt_scale16.conv.weight"].shape[1]
    if vit_width not in VIT_SIZES:
        raise ValueError(
            f"decoder.adapt_scale16 takes {vit_width} channels, which is no DINOv3 ViT width "
            f"{sorted(VIT_SIZES)}"
        )
    return {
        "_target_": "faceparse.models.FaceParser",
        "encoder": {
            "_target_": "faceparse.models.DualEncoder",
            "cnn": {"_target_": "faceparse.models.VggEncoder", "arch": "vgg19_bn",
                    "num_stages": 4, "weights": None},
            "vit": {"_target_": "faceparse.models.DinoVitEncoder", "size": VIT_SIZES[vit_width],
                    "layers": [-1], "frozen": True, "weights": None},
        },
        "decoder": {
            "_target_": "faceparse.models.CoarseToFineDecoder", "_partial_": True,
            "decoder_channels": int(state_dict["decoder.adapt_scale8.conv.weight"].shape[0]),
            "attention_refinement": "decoder.arm16.attention.1.weight" in state_dict,
            "dropout": 0.1,
        },
        "num_classes": int(state_dict["decoder.final_conv.2.weight"].shape[0]),
    }


def original_scheme(num_classes: int) -> LabelScheme:
    """The label order its heads predict: ``ourface`` (11) or FaceSynthetics (19)."""
    if num_classes not in SCHEMES_BY_CLASSES:
        raise ValueError(f"the original project has no {num_classes}-class variant (11 or 19)")
    return get_scheme(SCHEMES_BY_CLASSES[num_classes])


def original_to_faceparse(
    state_dict: Mapping[str, torch.Tensor], vit: nn.Module, source: object = "the checkpoint"
) -> dict[str, torch.Tensor]:
    """Its keys -> our ``FaceParser`` keys; the ViT goes through the DINOv3 filter.

    ``vit`` is the timm ViT the weights are for (the filter needs its shapes). Its DINOv3
    tensors pass the checks a DINOv3 file does (RoPE, patch size): timm's filter would
    resample another patch size without a word. Keys under no mapped module are dropped
    with a warning (the caller's strict load then reports anything missing).
    """
    out: dict[str, torch.Tensor] = {}
    official = {k.removeprefix(VIT_PREFIX): v for k, v in state_dict.items()
                if k.startswith(VIT_PREFIX)}
    if official:
        check_dinov3(official, vit, f"{source} ({VIT_PREFIX}*)")
        target = MODULE_MAP[VIT_PREFIX]
        out.update({target + k: v for k, v in dinov3_filter(official, vit).items()})
    unmapped = []
    for key, value in state_dict.items():
        prefix = next((p for p in MODULE_MAP if key.startswith(p)), None)
        if prefix is None:
            unmapped.append(key)
        elif prefix != VIT_PREFIX:
            out[MODULE_MAP[prefix] + key.removeprefix(prefix)] = value
    if unmapped:
        log.warning("ignoring %d keys outside %s: %s", len(unmapped), list(MODULE_MAP),
                    unmapped[:10])
    return out
