"""An inference-only rewrite of a net: BatchNorm folded into the convolution before it.

It keeps the function the net computes (up to rounding) but only pays where nothing
trains: a folded BatchNorm no longer normalises by batch statistics. So it runs in
``prepare_for_inference`` only, never in training; on an H100 the BatchNorm kernels were
12% of a 512 px inference batch (BENCHMARKS.md). The bf16 frozen ViT, which training uses
too, is :func:`faceparse.models.dinov3.frozen_vits_to_bf16`.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from faceparse.models.blocks import ConvBNReLU, DepthwiseSeparableConv

__all__ = ["fold_batchnorm"]


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
