"""Inference-only rewrites of a net: BatchNorm folded into the convolution before it, and
a ViT's LayerScale folded into the linear layer before it.

Both keep the function the net computes (up to rounding) but only pay where nothing
trains: a folded BatchNorm no longer normalises by batch statistics, and a folded
LayerScale changes the weights a checkpoint would hold. So they run in
``prepare_for_inference`` only, never in training; on an H100 the BatchNorm kernels were
12% of a 512 px inference batch (BENCHMARKS.md). The bf16 frozen ViT, which training uses
too, is :func:`faceparse.models.dinov3.frozen_vits_to_bf16`.
"""

from __future__ import annotations

import torch
from timm.models.eva import EvaBlock
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from faceparse.models.blocks import ConvBNReLU, DepthwiseSeparableConv

__all__ = ["fold_batchnorm", "fold_layer_scale", "successive_children"]


# modules whose forward runs their children one after another, in the order registered
_CHAINS = (nn.Sequential, ConvBNReLU, DepthwiseSeparableConv)


def successive_children(net: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """``(owner, first, second)`` for each two children of ``net``'s chains that run in turn.

    Chains are ``Sequential`` runs (torchvision's VGG features, the attention gate) and the
    decoder's conv/BN/ReLU blocks. An ``Identity`` between two children (a folded
    BatchNorm) is skipped: they still run in turn. Listed up front, so a rewrite may
    replace children while it goes through them.
    """
    pairs = []
    for module in net.modules():
        if isinstance(module, _CHAINS):
            names = [name for name, child in module.named_children()
                     if not isinstance(child, nn.Identity)]
            pairs += [(module, first, second)
                      for first, second in zip(names, names[1:], strict=False)]
    return pairs


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
    return sum(_fold_pair(*pair) for pair in successive_children(net))


def _scale_rows(linear: nn.Linear, gamma: torch.Tensor) -> None:
    """``linear``'s output scaled by ``gamma``, in fp32 and rounded once to its dtype."""
    with torch.no_grad():
        scale = gamma.detach().float()
        weight = linear.weight
        weight.copy_((weight.float() * scale[:, None]).to(weight.dtype))
        if linear.bias is not None:
            linear.bias.copy_((linear.bias.float() * scale).to(linear.bias.dtype))


def _fold_branch(block: nn.Module, gamma_name: str, linear: object) -> bool:
    gamma = getattr(block, gamma_name)
    if gamma is None or not isinstance(linear, nn.Linear):
        return False
    if gamma.shape != (linear.out_features,):
        return False
    _scale_rows(linear, gamma)
    setattr(block, gamma_name, None)  # timm's forward skips a LayerScale that is None
    return True


def fold_layer_scale(net: nn.Module) -> int:
    """Fold each timm EVA block's LayerScale into the linear layer before it; return the count.

    A DINOv3 block scales its attention's and its MLP's outputs by a per-channel
    ``gamma`` before the residual add: ``gamma * (W x + b)`` is ``(gamma W) x + gamma b``,
    so the scaling moves into ``attn.proj`` and ``mlp.fc2`` and 48 elementwise passes of a
    ViT-L's batch go. The products are taken in fp32 and rounded once, so fold before the
    weights are stored in bf16. The block's ``gamma_1``/``gamma_2`` become ``None``, which
    timm's forward skips: the net returned is for prediction, not for saving.
    """
    folded = 0
    for block in net.modules():
        # a subclass with its own forward may use its LayerScale elsewhere
        if not isinstance(block, EvaBlock) or type(block).forward is not EvaBlock.forward:
            continue
        folded += _fold_branch(block, "gamma_1", getattr(block.attn, "proj", None))
        folded += _fold_branch(block, "gamma_2", getattr(block.mlp, "fc2", None))
    return folded
