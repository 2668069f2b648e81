"""Inference-only rewrites of a net: BatchNorm folded into convolutions, a bf16 frozen ViT.

Both keep the function the net computes (up to rounding) and only pay where nothing
trains: a folded BatchNorm no longer normalises by batch statistics, and a ViT stored in
bf16 has no fp32 weights left to save. So they run in ``prepare_for_inference`` only,
never in training; on an H100 the BatchNorm kernels were 12% of a 512 px inference
batch and the per-call fp32 -> bf16 weight casts of the ViT 6% (BENCHMARKS.md).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from faceparse.models.blocks import ConvBNReLU, DepthwiseSeparableConv
from faceparse.models.dinov3 import DinoVitEncoder

__all__ = ["fold_batchnorm", "frozen_vit_to_bf16"]


def _fold_pair(owner: nn.Module, conv_name: str, bn_name: str) -> bool:
    conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
    if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
            and bn.track_running_stats and bn.running_mean is not None):
        return False
    setattr(owner, conv_name, fuse_conv_bn_eval(conv, bn))
    setattr(owner, bn_name, nn.Identity())
    return True


def fold_batchnorm(net: nn.Module) -> int:
    """Fold every BatchNorm that directly follows a convolution into it; return the count.

    Covers ``Sequential`` runs (torchvision's VGG features, the attention gate) and the
    decoder's conv/BN blocks. The net must be in eval mode: folding uses running statistics.
    """
    if net.training:
        raise ValueError("fold_batchnorm needs a net in eval mode (it uses running statistics)")
    folded = 0
    for module in list(net.modules()):
        if isinstance(module, ConvBNReLU):
            folded += _fold_pair(module, "conv", "bn")
        elif isinstance(module, DepthwiseSeparableConv):
            folded += _fold_pair(module, "pointwise", "bn")
        elif isinstance(module, nn.Sequential):
            names = [name for name, _ in module.named_children()]
            for first, second in zip(names, names[1:], strict=False):
                folded += _fold_pair(module, first, second)
    return folded


def frozen_vit_to_bf16(net: nn.Module) -> int:
    """Store each frozen DINOv3 ViT's weights in bf16; return how many ViTs were changed.

    The ViT then runs in bf16 autocast whatever its caller does and hands back maps in the
    caller's dtype (:meth:`DinoVitEncoder.store_frozen_weights`).
    """
    changed = 0
    for module in net.modules():
        if isinstance(module, DinoVitEncoder) and module.frozen:
            changed += module.store_frozen_weights(torch.bfloat16)
    return changed
