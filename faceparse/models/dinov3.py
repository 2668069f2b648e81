"""The ViT branch: a timm DINOv3 ViT whose final-normed patch tokens form a stride-16 map.

Weights are Meta's official checkpoints (``dinov3_vit*16_pretrain_lvd1689m-*.pth``, which
users download under Meta's licence) or timm's converted ``.safetensors``, read by
:mod:`faceparse.models.dinov3_weights`. A frozen ViT without weights is refused: its
random features would feed the decoder noise while training looked normal.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from faceparse.models.base import Encoder
from faceparse.models.blocks import keep_dtype
from faceparse.models.dinov3_weights import load_dinov3_weights, no_weights_message
from faceparse.option_values import booleans, is_number, is_whole, shown, whole_number

log = logging.getLogger(__name__)

__all__ = [
    "DinoVitEncoder",
    "LayerNormInInputDtype",
    "has_bf16_frozen_vit",
    "frozen_vits_to_bf16",
]

# DINOv3 ViTs in timm with query/value biases (exact for every official checkpoint).
DINOV3_MODELS = {
    "small": "vit_small_patch16_dinov3_qkvb",
    "base": "vit_base_patch16_dinov3_qkvb",
    "large": "vit_large_patch16_dinov3_qkvb",
}
DINOV3_WIDTHS = {"small": 384, "base": 768, "large": 1024}


class LayerNormInInputDtype(nn.LayerNorm):
    """A LayerNorm that runs in its input's dtype when its weights share it, autocast or not.

    CUDA autocast runs LayerNorm in fp32: in a ViT stored in bf16, each norm cast its bf16
    tokens to fp32, wrote fp32, and the next matmul cast them back (three passes where one
    does; 49 norms in a ViT-L; :func:`~faceparse.models.blocks.keep_dtype`). Anything else
    (fp32 tokens, a norm that trains in fp32) is left to autocast. Parameters and
    ``state_dict`` keys are a LayerNorm's.
    """

    @classmethod
    def like(cls, norm: nn.LayerNorm) -> LayerNormInInputDtype:
        """The same norm, holding the same parameter objects under the same names."""
        new = cls(norm.normalized_shape, eps=norm.eps, elementwise_affine=False)
        new.elementwise_affine = norm.elementwise_affine
        new.weight, new.bias = norm.weight, norm.bias
        return new.train(norm.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        same_dtype = self.weight is None or self.weight.dtype == x.dtype
        with keep_dtype(x) if same_dtype else contextlib.nullcontext():
            return super().forward(x)


# LayerNorms whose forward is F.layer_norm and nothing else (timm's without its fast_norm)
_PLAIN_LAYER_NORMS = (nn.LayerNorm, timm.layers.LayerNorm)


def _frozen_key_biases_to(model: nn.Module, dtype: torch.dtype) -> None:
    """The zero key bias (a buffer, so left fp32) in the dtype of a frozen query bias.

    Attention concatenates the three biases on every call: against bf16 query and value
    biases an fp32 key bias made that an fp32 concatenation, cast back by the matmul (two
    small kernels per block where one does). It is zero and outside ``state_dict``.
    """
    for module in model.modules():
        q_bias, k_bias = getattr(module, "q_bias", None), getattr(module, "k_bias", None)
        frozen = isinstance(q_bias, nn.Parameter) and not q_bias.requires_grad
        if frozen and isinstance(k_bias, torch.Tensor) and q_bias.dtype == dtype:
            module.k_bias = k_bias.to(dtype)


def _frozen_norms_in_input_dtype(model: nn.Module) -> None:
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            plain = type(child) in _PLAIN_LAYER_NORMS and not getattr(child, "_fast_norm", False)
            if plain and not any(p.requires_grad for p in child.parameters()):
                setattr(parent, name, LayerNormInInputDtype.like(child))


class DinoVitEncoder(Encoder):
    """A timm DINOv3 ViT returning final-normed patch tokens as a stride-16 map.

    Frozen by default: parameters need no grad, the ViT stays in eval mode whatever
    ``train()`` says, and its forward keeps no activations. Several ``layers`` are
    concatenated along channels (an ablation of which depths feed the decoder).
    ``size`` is small (S/16, 384 ch), base (B/16, 768) or large (L/16, 1024).
    ``weights`` is the DINOv3 file; a frozen ViT without one is refused unless
    ``random_init`` says random weights are meant (tests, the synthetic quickstart).
    ``finetune_blocks=N`` trains the last N blocks and the final norm of a frozen ViT;
    ``lr_scale`` multiplies the learning rate of whatever part of the ViT trains.
    ``fused_attn=False`` swaps PyTorch's fused SDPA (flash / memory-efficient kernels) for
    timm's explicit softmax(QK^T)V, the slow path kept for comparison and debugging.
    """

    def __init__(
        self,
        size: str = "large",
        layers: Sequence[int] = (-1,),
        frozen: bool = True,
        weights: str | Path | None = None,
        random_init: bool = False,
        finetune_blocks: int = 0,
        lr_scale: float = 0.1,
        fused_attn: bool = True,
    ) -> None:
        super().__init__()
        booleans("vit.", frozen=frozen, random_init=random_init, fused_attn=fused_attn)
        if (isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or not layers
                or not all(is_whole(i) for i in layers)):
            raise ValueError(f"vit.layers={shown(layers)}: a non-empty list of block indices "
                             f"(whole numbers; -1 is the last block), e.g. vit.layers=[-1]")
        whole_number("vit.finetune_blocks", finetune_blocks, 0, "the number of tuned blocks")
        if not is_number(lr_scale) or lr_scale <= 0:
            raise ValueError(f"vit.lr_scale={shown(lr_scale)}: the ViT's learning rate is "
                             f"lr times this, a number > 0 (0 or less would not train it, or "
                             f"climb the loss); freeze it with vit.frozen=true instead of 0")
        if size not in DINOV3_MODELS:
            raise ValueError(f"vit.size={shown(size)}: not a DINOv3 size faceparse builds; "
                             f"choose one of {', '.join(DINOV3_MODELS)}")
        if weights is None and not random_init:
            raise FileNotFoundError(no_weights_message(DINOV3_WIDTHS[size], frozen))
        self.size = size
        self.model = timm.create_model(
            DINOV3_MODELS[size], pretrained=False, dynamic_img_size=True
        )
        for module in self.model.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = fused_attn
        depth = len(self.model.blocks)
        outside = [i for i in layers if not -depth <= i < depth]
        if outside:
            raise ValueError(
                f"vit.layers={shown(list(layers))}: {shown(outside)} outside the {depth}-block "
                f"ViT-{size}; use 0..{depth - 1} or -{depth}..-1"
            )
        # timm returns blocks once each, in depth order: name each block once.
        self.layers = tuple(sorted({i % depth for i in layers}))
        if len(self.layers) != len(layers):
            raise ValueError(f"vit.layers={shown(list(layers))} names the same block twice")
        if finetune_blocks > depth:
            raise ValueError(f"vit.finetune_blocks={finetune_blocks}: the ViT-{size} has "
                             f"{depth} blocks; use 0..{depth}")
        _refuse_untrainable_tail(finetune_blocks, frozen, self.layers, depth)
        self.frozen = frozen
        self.weights_file = str(weights) if weights is not None else None
        self.lr_scale = lr_scale
        self.out_channels = (self.model.embed_dim * len(self.layers),)
        self.strides = (self.model.patch_embed.patch_size[0],)
        if weights is not None:
            load_dinov3_weights(self.model, weights)
        # The fine-tuned tail (a plain tuple: its modules are already registered in the ViT,
        # so state_dict keys stay the same); the rest of a frozen ViT stays in eval mode.
        self.tuned: tuple[nn.Module, ...] = ()
        # set by store_frozen_weights: the dtype the ViT then runs in
        self.compute_dtype: torch.dtype | None = None
        if frozen:
            self.model.requires_grad_(False)
            self.model.eval()
            if finetune_blocks:
                self.tuned = (*self.model.blocks[depth - finetune_blocks :], self.model.norm)
                for module in self.tuned:
                    module.requires_grad_(True)
                    module.train(self.training)  # Lightning keeps the modes it is given

    def param_groups(self) -> list[dict[str, Any]]:
        """Whatever part of the ViT trains learns at ``lr_scale`` times the learning rate."""
        return [{"params": [p for p in self.parameters() if p.requires_grad],
                 "lr_scale": self.lr_scale}]

    def train(self, mode: bool = True) -> DinoVitEncoder:
        super().train(mode)
        if self.frozen:
            self.model.eval()
            for module in self.tuned:
                module.train(mode)
        return self

    def store_frozen_weights(self, dtype: torch.dtype) -> bool:
        """Keep the frozen weights in ``dtype`` and run the ViT in ``dtype`` autocast.

        Autocast otherwise casts every frozen fp32 weight on every call (it caches casts
        only of weights that need a gradient) and promotes bf16 activations back to fp32
        against fp32 LayerScale weights; the frozen LayerNorms run in ``dtype`` too
        (:class:`LayerNormInInputDtype`). Buffers (RoPE periods) stay fp32, and the maps
        come back in the caller's dtype, so the rest of the net sees no difference. A
        ``state_dict`` still holds the weights in their old dtype (the values rounded to
        ``dtype``), so a checkpoint's format does not depend on the machine that trained
        it. Returns whether anything changed.
        """
        frozen = {name: p for name, p in self.named_parameters() if not p.requires_grad}
        if frozen and self.compute_dtype is None:
            saved_dtype = next(iter(frozen.values())).dtype
            self.register_state_dict_post_hook(
                functools.partial(_restore_saved_dtype, names=tuple(frozen), dtype=saved_dtype))
        for param in frozen.values():
            param.data = param.data.to(dtype)
        _frozen_key_biases_to(self.model, dtype)
        _frozen_norms_in_input_dtype(self.model)
        self.compute_dtype = dtype
        return bool(frozen)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        trains = not self.frozen or bool(self.tuned)
        # only a bf16-stored ViT opens its own autocast: an autocast(enabled=False) here would
        # switch the caller's bf16 autocast off inside the ViT (2.6x slower on an H100)
        precision = (torch.autocast(x.device.type, dtype=self.compute_dtype)
                     if self.compute_dtype is not None else contextlib.nullcontext())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trains), precision:
            maps = self.model.forward_intermediates(
                x, indices=list(self.layers), norm=True, stop_early=True, output_fmt="NCHW",
                intermediates_only=True)  # the blocks after the deepest tap never run
        if self.compute_dtype is not None:
            maps = [m.to(x.dtype) for m in maps]
        return [torch.cat(maps, dim=1) if len(maps) > 1 else maps[0]]


def _refuse_untrainable_tail(finetune_blocks: int, frozen: bool, layers: tuple[int, ...],
                             depth: int) -> None:
    """Refuse ViT blocks that would be trained but never run (the ViT stops at its deepest
    tapped layer): they would not learn, and DDP stops on unused parameters. Also refuse
    ``finetune_blocks`` where it would not apply (an unfrozen ViT trains whole)."""
    if not frozen and max(layers) < depth - 1:
        idle = f"block {depth - 1}" if max(layers) == depth - 2 else \
            f"blocks {max(layers) + 1}-{depth - 1}"
        raise ValueError(
            f"vit.frozen=false trains the whole ViT, but vit.layers={list(layers)} stops it at "
            f"block {max(layers)}: {idle} would never run or learn; tap the last block too "
            f"(vit.layers=[..., -1]) or keep vit.frozen=true")
    if not finetune_blocks:
        return
    if not frozen:
        raise ValueError(f"vit.finetune_blocks={finetune_blocks} tunes the last blocks of a "
                         f"frozen ViT, and vit.frozen=false trains all of it: set one of them")
    if max(layers) < depth - 1:
        idle = max(max(layers) + 1, depth - finetune_blocks)
        blocks = f"block {idle}" if idle == depth - 1 else f"blocks {idle}-{depth - 1}"
        raise ValueError(
            f"vit.finetune_blocks={finetune_blocks} trains the last {finetune_blocks} blocks, "
            f"but vit.layers={list(layers)} stops the ViT at block {max(layers)}: {blocks} "
            f"would never run or learn; tap the last block too (vit.layers=[..., -1]) or "
            f"set vit.finetune_blocks=0")


def _restore_saved_dtype(module: nn.Module, state_dict: dict[str, Any], prefix: str,
                         local_metadata: dict[str, Any], *, names: tuple[str, ...],
                         dtype: torch.dtype) -> None:
    for name in names:
        key = prefix + name
        if key in state_dict:
            state_dict[key] = state_dict[key].to(dtype)


def frozen_vits_to_bf16(net: nn.Module) -> int:
    """Store each frozen DINOv3 ViT's weights in bf16; return how many ViTs were changed.

    The ViT then runs in bf16 autocast whatever its caller does and hands back maps in the
    caller's dtype (:meth:`DinoVitEncoder.store_frozen_weights`). Its trained blocks, if
    any (``finetune_blocks``), keep their dtype and train as before.
    """
    changed = 0
    for module in net.modules():
        if isinstance(module, DinoVitEncoder) and module.frozen:
            changed += module.store_frozen_weights(torch.bfloat16)
    return changed


def has_bf16_frozen_vit(net: nn.Module) -> bool:
    """Whether :func:`frozen_vits_to_bf16` stored a frozen ViT of ``net`` in bf16: it then
    runs in bf16 whatever precision its caller asks for."""
    return any(isinstance(m, DinoVitEncoder) and m.frozen
               and any(p.dtype == torch.bfloat16 for p in m.parameters())
               for m in net.modules())
