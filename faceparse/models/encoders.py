"""Encoders with one contract: ``forward(x) -> list of NCHW maps ordered by stride``.

Every encoder exposes ``out_channels`` and ``strides`` so a decoder can be built from
them and check them up front. The CNN branch wraps torchvision's VGG ``features``;
the ViT branch wraps timm's DINOv3 ViTs; :class:`DualEncoder` joins them as in the
reference model, :class:`VitPyramidEncoder` builds a pyramid from the ViT alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from faceparse.models.blocks import ConvBNReLU
from faceparse.models.weights import load_dinov3_weights, load_vgg_weights, vgg_hub_file

__all__ = ["VggEncoder", "DinoVitEncoder", "DualEncoder", "VitPyramidEncoder"]

VIT_PATCH = 16
# DINOv3 ViTs in timm with query/value biases (exact for every official checkpoint).
DINOV3_MODELS = {
    "small": "vit_small_patch16_dinov3_qkvb",
    "base": "vit_base_patch16_dinov3_qkvb",
    "large": "vit_large_patch16_dinov3_qkvb",
}


class VggEncoder(nn.Module):
    """torchvision VGG-BN ``features`` tapped just before each max-pool.

    ``num_stages=4`` gives strides 1, 2, 4, 8 (the dual model's CNN branch; the module
    list then matches the original project's ``encoder.cnn.layers.<i>`` keys);
    ``num_stages=5`` adds block 5 at stride 16 for the CNN-only ablation. ImageNet weights
    come from ``weights`` (a torchvision file) or, with ``pretrained``, from the torch hub
    cache; nothing is downloaded.
    """

    def __init__(
        self,
        arch: str = "vgg19_bn",
        num_stages: int = 4,
        weights: str | Path | None = None,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        if not 1 <= num_stages <= 5:
            raise ValueError(f"num_stages must be in 1..5, got {num_stages}")
        try:
            features = getattr(torchvision.models, arch)(weights=None).features
        except AttributeError:
            raise ValueError(f"unknown torchvision VGG architecture {arch!r}") from None
        pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
        # Keep everything up to the pool that ends the last stage (excluded).
        self.layers = nn.Sequential(*features[: pools[num_stages - 1]])
        convs = [m for m in self.layers if isinstance(m, nn.Conv2d)]
        stage_ends = [i for i, m in enumerate(self.layers) if isinstance(m, nn.MaxPool2d)]
        self.out_channels = tuple(
            [_last_conv_channels(self.layers[:end]) for end in stage_ends]
            + [convs[-1].out_channels]
        )
        self.strides = tuple(2**i for i in range(num_stages))
        if weights is None and pretrained:
            weights = vgg_hub_file(arch)
            if not weights.is_file():
                raise FileNotFoundError(
                    f"encoder.cnn.pretrained=true but {weights.name} is not in the torch hub "
                    f"cache {weights.parent}, and faceparse does not download. Copy the file "
                    f"there (or set encoder.cnn.weights=<path>); on a machine online, "
                    f"torchvision.models.{arch}(weights='IMAGENET1K_V1') fetches it."
                )
        if weights is not None:
            load_vgg_weights(self.layers, weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for layer in self.layers:
            if isinstance(layer, nn.MaxPool2d):
                taps.append(x)
            x = layer(x)
        taps.append(x)
        return taps


def _last_conv_channels(layers: nn.Sequential) -> int:
    return [m for m in layers if isinstance(m, nn.Conv2d)][-1].out_channels


class DinoVitEncoder(nn.Module):
    """A timm DINOv3 ViT returning final-normed patch tokens as a stride-16 map.

    Frozen by default: parameters need no grad, the ViT stays in eval mode whatever
    ``train()`` says, and its forward keeps no activations. Several ``layers`` are
    concatenated along channels (an ablation of which depths feed the decoder).
    ``size`` is small (S/16, 384 ch), base (B/16, 768) or large (L/16, 1024).
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
        finetune_blocks: int = 0,
        lr_scale: float = 0.1,
        fused_attn: bool = True,
    ) -> None:
        super().__init__()
        if size not in DINOV3_MODELS:
            raise ValueError(f"unknown DINOv3 size {size!r}; choose one of {list(DINOV3_MODELS)}")
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
                f"layers {outside} are outside the {depth}-block ViT-{size}; "
                f"use 0..{depth - 1} or -{depth}..-1"
            )
        # timm returns blocks once each, in depth order: name each block once.
        self.layers = tuple(sorted({i % depth for i in layers}))
        if len(self.layers) != len(layers):
            raise ValueError(f"layers {list(layers)} name the same block twice")
        if not 0 <= finetune_blocks <= depth:
            raise ValueError(f"finetune_blocks must be in 0..{depth}, got {finetune_blocks}")
        self.frozen = frozen
        self.lr_scale = lr_scale
        self.out_channels = (self.model.embed_dim * len(self.layers),)
        self.strides = (VIT_PATCH,)
        if weights is not None:
            load_dinov3_weights(self.model, weights)
        # The fine-tuned tail (a plain tuple: its modules are already registered in the ViT,
        # so state_dict keys stay the same); the rest of a frozen ViT stays in eval mode.
        self.tuned: tuple[nn.Module, ...] = ()
        if frozen:
            self.model.requires_grad_(False)
            self.model.eval()
            if finetune_blocks:
                self.tuned = (*self.model.blocks[depth - finetune_blocks :], self.model.norm)
                for module in self.tuned:
                    module.requires_grad_(True)

    def train(self, mode: bool = True) -> DinoVitEncoder:
        super().train(mode)
        if self.frozen:
            self.model.eval()
            for module in self.tuned:
                module.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        trains = not self.frozen or bool(self.tuned)
        with torch.set_grad_enabled(torch.is_grad_enabled() and trains):
            maps = self.model.forward_intermediates(
                x, indices=list(self.layers), norm=True, output_fmt="NCHW", intermediates_only=True
            )
        return [torch.cat(maps, dim=1) if len(maps) > 1 else maps[0]]


class DualEncoder(nn.Module):
    """The reference encoder: VGG maps at strides 1-8 plus the DINOv3 map at stride 16."""

    def __init__(self, cnn: VggEncoder, vit: DinoVitEncoder) -> None:
        super().__init__()
        self.cnn = cnn
        self.vit = vit
        self.out_channels = tuple(cnn.out_channels) + tuple(vit.out_channels)
        self.strides = tuple(cnn.strides) + tuple(vit.strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.cnn(x) + self.vit(x)


class VitPyramidEncoder(nn.Module):
    """A simple feature pyramid (strides 1-16) built from the ViT map alone.

    Each finer level is a 1x1 projection of the stride-16 map, bilinearly upsampled
    and refined by a 3x3 conv: the ViT-only ablation, with no CNN detail.
    """

    def __init__(
        self, vit: DinoVitEncoder, pyramid_channels: Sequence[int] = (64, 128, 256, 512)
    ) -> None:
        super().__init__()
        self.vit = vit
        (vit_channels,) = vit.out_channels
        self.levels = nn.ModuleList(
            nn.Sequential(ConvBNReLU(vit_channels, c, 1), ConvBNReLU(c, c, 3))
            for c in pyramid_channels
        )
        self.out_channels = (*pyramid_channels, vit_channels)
        self.strides = tuple(2**i for i in range(len(pyramid_channels))) + (VIT_PATCH,)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        (top,) = self.vit(x)
        maps = []
        for stride, level in zip(self.strides, self.levels, strict=False):
            size = (x.shape[-2] // stride, x.shape[-1] // stride)
            proj = level[0](top)
            maps.append(level[1](F.interpolate(proj, size=size, mode="bilinear")))
        return maps + [top]
