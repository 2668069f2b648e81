"""Batched prediction: label maps straight from the logits, probabilities only when asked.

Softmax is monotonic, so the argmax of the logits is the argmax of the probabilities: a
full-resolution (N, C, H, W) softmax is computed only for ``probs=True``. Everything runs
under ``torch.inference_mode``; in bf16 autocast where that is faster and, after
:func:`prepare_for_inference`, with the :class:`~faceparse.fast_path.FastPath` options.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from faceparse.cpu_memory import reuse_freed_cpu_memory
from faceparse.fast_path import FastPath, inference_bf16
from faceparse.inference.conv_relu import fuse_conv_relu
from faceparse.inference.fold import fold_batchnorm, fold_layer_scale
from faceparse.inference.host_copies import HostCopies
from faceparse.models.dinov3 import frozen_vits_to_bf16

__all__ = ["Prediction", "prepare_for_inference", "predict"]


@dataclass
class Prediction:
    """``labels`` (N, H, W) uint8 on the CPU; ``probs`` (N, C, H, W) float32 when asked."""

    labels: torch.Tensor
    probs: torch.Tensor | None = None


def prepare_for_inference(
    net: nn.Module, device: str | torch.device = "cpu", fast_path: FastPath | None = None,
    bf16: bool | None = None,
) -> nn.Module:
    """Eval mode on ``device``, with the fast path's options where they pay there.

    Also the inference-only rewrites ``fold_batchnorm``, ``fold_layer_scale``,
    ``fuse_conv_relu`` (on a CPU unless told otherwise) and ``frozen_vit_bf16`` where
    inference runs in bf16 (``bf16``: whether it will; ``None``: where bf16 is the faster
    path on ``device``): the net returned is for prediction, not for training or saving.
    On a CPU, freed memory is kept for reuse (``reuse_cpu_memory``): the predict pass
    gained 1.1-1.3x, a training run nothing measurable, so only inference does it.
    """
    fast_path = fast_path or FastPath()
    device = torch.device(device)
    net = net.eval().to(device)
    if fast_path.fold_batchnorm:
        fold_batchnorm(net)
    if fast_path.fold_layer_scale:  # in fp32, before the ViT's weights go to bf16
        fold_layer_scale(net)
    if fast_path.wants_conv_relu_fused(device):  # after the fold: conv and ReLU adjacent
        fuse_conv_relu(net, device.type)
    if fast_path.wants_frozen_vit_bf16(device, bf16):
        frozen_vits_to_bf16(net)
    if device.type == "cpu" and fast_path.reuse_cpu_memory:
        reuse_freed_cpu_memory()
    return fast_path.apply(net, device)


def predict(
    net: nn.Module,
    images: torch.Tensor,
    batch_size: int = 8,
    probs: bool = False,
    bf16: bool | None = None,
    overlap: bool | None = None,
) -> Prediction:
    """Label maps for ImageNet-normalised ``images`` (N, 3, H, W), ``batch_size`` at a time.

    ``bf16=None`` means bf16 autocast where it is the faster path on the net's device
    (:func:`~faceparse.fast_path.inference_bf16`: a bf16 GPU, or a CPU with fast bf16).
    ``overlap=None`` means, on a GPU, queueing each batch before waiting for the results
    of the one before (:class:`~faceparse.inference.host_copies.HostCopies`); ``False``
    waits after every batch.
    """
    device = next(net.parameters()).device
    bf16 = inference_bf16(device) if bf16 is None else bf16
    copies = HostCopies(device, deferred=overlap)
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
        for chunk in images.split(batch_size):
            logits = net(copies.to_device(chunk))
            label_type = torch.uint8 if logits.shape[1] <= 256 else torch.int64
            outputs = [logits.argmax(1).to(label_type)]
            if probs:
                outputs.append(logits.float().softmax(1))
            copies.to_host(outputs)
    batches = copies.results()
    return Prediction(torch.cat([b[0] for b in batches]),
                      torch.cat([b[1] for b in batches]) if probs else None)
