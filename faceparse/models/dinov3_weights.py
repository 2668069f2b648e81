"""DINOv3 weight files: Meta's official checkpoints or timm's converted ``.safetensors``,
checked (a DINOv3 ViT, its patch size and RoPE, every weight) and loaded into timm's ViT.

No file can be downloaded here: a missing one is an error naming where to get it and the
option that takes it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from faceparse.models.weights import (
    CHECKPOINT_DIR_HINT,
    BadWeightValuesError,
    StateDict,
    load_state_dict_file,
    load_strict,
)

log = logging.getLogger(__name__)

__all__ = [
    "DINOV3_FILES",
    "DINOV3_SOURCE",
    "VIT_WEIGHTS_OPTIONS",
    "check_dinov3",
    "describe_vit",
    "dinov3_filter",
    "load_dinov3_weights",
    "no_weights_message",
]

DINOV3_SOURCE = "https://github.com/facebookresearch/dinov3 (Meta licence, request access there)"
# the options that name a DINOv3 file, for the message when it is missing
VIT_WEIGHTS_OPTIONS = "vit.weights= (training) or vit_weights= (predict, eval, export)"
# Official file names by width: S/16, B/16, L/16.
DINOV3_FILES = {
    384: ("ViT-S/16", "dinov3_vits16_pretrain_lvd1689m-*.pth"),
    768: ("ViT-B/16", "dinov3_vitb16_pretrain_lvd1689m-*.pth"),
    1024: ("ViT-L/16", "dinov3_vitl16_pretrain_lvd1689m-*.pth"),
}


def no_weights_message(width: int, frozen: bool = True) -> str:
    """Why a ViT without weights is refused, and where to get the file for its width."""
    name, pattern = DINOV3_FILES.get(width, ("DINOv3", "dinov3_vit*16_pretrain_lvd1689m-*.pth"))
    harm = ("its random features would feed the decoder noise" if frozen else
            "with vit.frozen=false it would train a ViT from scratch, not fine-tune DINOv3")
    return (
        f"the {'frozen ' if frozen else ''}DINOv3 {name} has no weights (vit.weights is "
        f"null): {harm}. Download {pattern} from "
        f"{DINOV3_SOURCE}, put it in {CHECKPOINT_DIR_HINT} and set "
        f"vit.weights=<that file>; or set vit.random_init=true to use random weights on "
        f"purpose (tests, the synthetic quickstart)."
    )


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
    # Meta's files (storage_tokens) carry qkv.bias: one without it is damaged, not bias-free
    timm_named = "storage_tokens" not in state_dict
    bias_free = timm_named and not any(k.endswith(".q_bias") for k in state)
    if missing and bias_free and all(k.endswith((".q_bias", ".v_bias")) for k in missing):
        log.info("bias-free DINOv3 weights: setting %d query/value biases to 0", len(missing))
        state.update({k: torch.zeros_like(own[k]) for k in missing})
    return state


# The SwiGLU-MLP ("plus") variants faceparse has no encoder for, by width.
SWIGLU_VITS = {384: "ViT-S+/16", 1280: "ViT-H+/16", 4096: "ViT-7B/16"}
# a SwiGLU MLP's key in Meta's names (mlp.w1/w2/w3) and in timm's (mlp.fc1_g/fc1_x)
SWIGLU_KEYS = (".mlp.w1.weight", ".mlp.fc1_g.weight")


def is_swiglu(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether the ViT's MLPs are SwiGLU: the ``plus`` DINOv3 variants (and ViT-7B)."""
    return any(k.endswith(SWIGLU_KEYS) for k in state_dict)


def describe_vit(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``ViT-B/16 (width 768, 12 blocks)`` for a DINOv3 state dict, in any key naming."""
    width = state_dict["cls_token"].shape[-1]
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    if is_swiglu(state_dict):
        name = SWIGLU_VITS.get(width, f"{width}-wide ViT")
        return f"{name} (width {width}, {len(blocks)} blocks, SwiGLU MLP)"
    name = DINOV3_FILES.get(width, (f"{width}-wide ViT",))[0]
    return f"{name} (width {width}, {len(blocks)} blocks)"


def _file_for(width: int) -> str:
    """The official file name pattern for a width (any size when the width is none)."""
    return DINOV3_FILES.get(width, ("", "dinov3_vit*16_pretrain_lvd1689m-*.pth"))[1]


def _check_layout(state: Mapping[str, torch.Tensor], model: nn.Module, path: object) -> None:
    """Name the DINOv3 files faceparse cannot read: Hugging Face transformers' layout, which
    is no other ViT, and the SwiGLU "plus" variants, which a new download does not fix."""
    width = int(model.embed_dim)
    if any(k.endswith("embeddings.cls_token") for k in state) and any(
            "embeddings.register_tokens" in k for k in state):
        raise ValueError(
            f"{path} is a DINOv3 in Hugging Face transformers' layout (embeddings.*, "
            f"layer.N.*), which faceparse does not read: use Meta's official {_file_for(width)} "
            f"from {DINOV3_SOURCE} or timm's converted DINOv3 weights (.safetensors)")
    if "cls_token" in state and is_swiglu(state):
        raise ValueError(
            f"{path} holds a DINOv3 {describe_vit(state)}, a variant faceparse does not "
            f"support: use {_file_for(width)} from {DINOV3_SOURCE}")


def check_dinov3(state: Mapping[str, torch.Tensor], model: nn.Module, path: object) -> None:
    """Refuse files that are no DINOv3 ViT, or use another RoPE or patch size, before
    renaming keys: the same checks for a standalone file and one inside a checkpoint
    (``path`` names where the tensors are)."""
    _check_layout(state, model, path)
    if "cls_token" not in state or not ({"storage_tokens", "reg_token"} & set(state)):
        sample = ", ".join(list(state)[:4])
        raise ValueError(
            f"{path} is not a DINOv3 ViT checkpoint (no cls_token and storage/register tokens; "
            f"its first keys are {sample}). Use an official {DINOV3_FILES[1024][1]}-style file "
            f"from {DINOV3_SOURCE} or timm's converted DINOv3 weights."
        )
    _check_patch_size(state, model, path)
    periods, ours = state.get("rope_embed.periods"), model.rope.periods
    if periods is None or periods.shape != ours.shape or not periods.is_floating_point():
        return
    # A file converted to fp16/bf16 holds rounded periods: compare at the file's precision.
    rounded = ours.to(periods.dtype).float()
    # a few units in the last place of the file's dtype: fp32 files computed another way
    tolerance = max(1e-5, 4 * torch.finfo(periods.dtype).eps)
    if not torch.allclose(periods.float(), rounded, rtol=tolerance):
        raise ValueError(f"{path}: its RoPE periods differ from timm's DINOv3 (another RoPE base?)")


def _check_patch_size(state: Mapping[str, torch.Tensor], model: nn.Module, path: object
                      ) -> None:
    """Refuse another patch size before timm's filter resamples it to ours (then it fits)."""
    found = tuple(getattr(state.get("patch_embed.proj.weight"), "shape", ())[-2:])
    ours = tuple(model.patch_embed.proj.weight.shape[-2:])
    if len(found) == 2 and found != ours:
        raise ValueError(f"{path} is a ViT with {found[0]}x{found[1]} patches, this encoder's "
                         f"patch size is {ours[0]}x{ours[1]}: use a DINOv3 /16 file")


def load_dinov3_weights(model: nn.Module, path: str | Path) -> None:
    """Load Meta's official DINOv3 checkpoint (or timm's ``.safetensors``) into a timm ViT."""
    path = Path(path).expanduser()
    size, pattern = DINOV3_FILES.get(model.embed_dim, ("ViT", "dinov3_vit*16_*.pth"))
    state = load_state_dict_file(path, f"DINOv3 {size}", f"{pattern} from {DINOV3_SOURCE}",
                                 option=VIT_WEIGHTS_OPTIONS, pattern=pattern)
    check_dinov3(state, model, path)
    found = describe_vit(state)
    expected = describe_vit({"cls_token": model.cls_token, **model.state_dict()})
    try:
        load_strict(model, dinov3_filter(state, model), f"DINOv3 weights {path}")
    except BadWeightValuesError:
        raise  # the architecture fits: the error already says what is wrong
    except ValueError as error:
        if found != expected:
            raise ValueError(
                f"the file holds a {found}, this encoder is a {expected} (set vit.size to "
                f"match the file, or use {pattern}). {error}"
            ) from None
        raise ValueError(f"the file holds a {found} like this encoder, but not all of its "
                         f"weights (damaged or cut? get {pattern} again from "
                         f"{DINOV3_SOURCE}). {error}") from None
    log.info("loaded DINOv3 %s weights from %s", found, path)
