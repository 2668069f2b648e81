"""The CNN branch: torchvision's VGG-BN ``features`` tapped just before each max-pool.

Weights are torchvision's ImageNet files (``vgg19_bn-c79401a0.pth``), read from a given
path or the torch hub cache; nothing is downloaded. The layer list keeps torchvision's
indices, so the original FaceParsing project's ``encoder.cnn.layers.<i>`` keys load as
they are.

``freeze_norm`` keeps the pretrained BatchNorm statistics and affine fixed while the rest
trains (detectron2's and mmdetection's habit for pretrained backbones). Each frozen
BatchNorm is then a per-channel affine map, and the encoder runs it inside the convolution
before it, with the scaled weight computed anew each step so the convolution's weight
still trains exactly as under a separate BatchNorm: no statistics, normalisation or
BatchNorm gradient passes over the full-resolution maps (BENCHMARKS.md, "Frozen VGG
BatchNorm").
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from faceparse.models.base import Encoder
from faceparse.models.weights import StateDict, load_state_dict_file, load_strict
from faceparse.option_values import booleans, is_whole, shown

log = logging.getLogger(__name__)

__all__ = ["VggEncoder", "conv_with_frozen_norm", "load_vgg_weights",
           "refuse_untrained_frozen_norms", "vgg_features_filter", "vgg_hub_file",
           "warn_random_cnn"]

# torchvision's VGGs: the BN ones are the encoder; the plain ones for comparison
VGG_ARCHS = tuple(f"vgg{depth}{bn}" for bn in ("_bn", "") for depth in (11, 13, 16, 19))
VGG_SOURCE = "torchvision's vgg19_bn ImageNet weights (vgg19_bn-c79401a0.pth)"


class VggEncoder(Encoder):
    """torchvision VGG-BN ``features`` tapped just before each max-pool.

    ``num_stages=4`` gives strides 1, 2, 4, 8 (the dual model's CNN branch; the module
    list then matches the original project's ``encoder.cnn.layers.<i>`` keys);
    ``num_stages=5`` adds block 5 at stride 16 for the CNN-only ablation. ImageNet weights
    come from ``weights`` (a torchvision file) or, with ``pretrained``, from the torch hub
    cache; nothing is downloaded (``random_init`` says that none is meant, so training
    does not warn about it). ``freeze_norm`` keeps the BatchNorm layers' statistics,
    scale and shift as loaded (pretrained or from a checkpoint): they stay in eval mode and
    out of the optimizer, and each runs inside the convolution before it.
    """

    def __init__(
        self,
        arch: str = "vgg19_bn",
        num_stages: int = 4,
        weights: str | Path | None = None,
        pretrained: bool = False,
        freeze_norm: bool = False,
        random_init: bool = False,
    ) -> None:
        super().__init__()
        booleans("cnn.", pretrained=pretrained, freeze_norm=freeze_norm, random_init=random_init)
        if not is_whole(num_stages) or not 1 <= num_stages <= 5:
            raise ValueError(f"cnn.num_stages={shown(num_stages)}: a whole number in 1..5")
        if arch not in VGG_ARCHS:
            raise ValueError(f"cnn.arch={shown(arch)}: not a torchvision VGG; choose one of "
                             f"{', '.join(VGG_ARCHS)}")
        features = getattr(torchvision.models, arch)(weights=None).features
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
                    f"cnn.pretrained=true but {weights.name} is not in the torch hub cache "
                    f"{weights.parent}, and faceparse does not download. Copy the file there "
                    f"(or set cnn.weights=<path>); on a machine online, "
                    f"torchvision.models.{arch}(weights='IMAGENET1K_V1') fetches it."
                )
        if weights is not None:
            load_vgg_weights(self.layers, weights)
        self.arch = arch
        self.loaded_from = weights
        self.random_init = random_init
        self.freeze_norm = freeze_norm
        if freeze_norm:
            for norm in self.norms():
                norm.requires_grad_(False)
                norm.eval()

    def norms(self) -> list[_BatchNorm]:
        """The BatchNorm layers, in order (SyncBatchNorm too, as DDP converts them)."""
        return [m for m in self.layers if isinstance(m, _BatchNorm)]

    def train(self, mode: bool = True) -> VggEncoder:
        super().train(mode)
        if self.freeze_norm:
            for norm in self.norms():
                norm.eval()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        layers = list(self.layers) + [None]
        skip_norm = False  # the BatchNorm just run inside its convolution
        for layer, following in zip(layers, layers[1:], strict=False):
            if skip_norm:
                skip_norm = False
                continue
            if isinstance(layer, nn.MaxPool2d):
                taps.append(x)
            skip_norm = (self.freeze_norm and isinstance(layer, nn.Conv2d)
                         and isinstance(following, _BatchNorm))
            x = conv_with_frozen_norm(layer, following, x) if skip_norm else layer(x)
        taps.append(x)
        return taps


def conv_with_frozen_norm(conv: nn.Conv2d, norm: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(conv(x))`` for a BatchNorm in eval mode, as one convolution.

    The BatchNorm's per-channel scale ``s`` and shift ``t`` go into the weight and bias:
    ``conv(x, w * s) + (b * s + t)``. The product is taken each call from the trainable
    ``w``, so its gradient is the one a separate BatchNorm would pass back (``s`` times the
    scaled weight's), unlike folding once (:func:`torch.nn.utils.fusion.fuse_conv_bn_eval`),
    which makes the product itself the trained parameter.
    """
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    return conv._conv_forward(x, conv.weight * scale.reshape(-1, 1, 1, 1), shift)


def warn_random_cnn(net: nn.Module) -> None:
    """Say so when training starts a VGG from random weights without being asked to.

    The reference model starts from ImageNet's VGG; forgetting ``cnn.pretrained`` trains
    and scores normally, only worse, so a run (and an ablation of it) would never show it.
    """
    for name, module in net.named_modules():
        if isinstance(module, VggEncoder) and module.loaded_from is None \
                and not module.random_init:
            log.warning(
                "the CNN%s (%s) starts from random weights: neither cnn.weights nor "
                "cnn.pretrained=true is set. The reference model starts from ImageNet's "
                "(torchvision's %s-*.pth in the torch hub cache with cnn.pretrained=true, or "
                "cnn.weights=<file>); cnn.random_init=true says random weights are meant",
                f" ({name})" if name else "", module.arch, module.arch)


def refuse_untrained_frozen_norms(net: nn.Module) -> None:
    """Refuse to train with frozen BatchNorm statistics that were never computed.

    A VGG built without ImageNet weights starts with running means 0 and variances 1:
    frozen, its BatchNorms would normalise nothing for the whole run, and training would
    look normal while the CNN learned without them. Call this once the weights are in
    (pretrained file or checkpoint); a resumed run brings its own statistics.
    """
    for name, module in net.named_modules():
        if not (isinstance(module, VggEncoder) and module.freeze_norm):
            continue
        norms = module.norms()
        untrained = [n for n in norms
                     if n.running_mean is None or (not n.running_mean.any()
                                                   and bool((n.running_var == 1).all()))]
        if untrained:
            where = f" ({name})" if name else ""
            raise ValueError(
                f"cnn.freeze_norm=true keeps the VGG's BatchNorm statistics fixed, but "
                f"{len(untrained)} of its {len(norms)} BatchNorm layers{where} hold the "
                f"initial ones (mean 0, variance 1): never computed. Load ImageNet weights "
                f"(cnn.weights=<torchvision's file, e.g. vgg19_bn-c79401a0.pth> or "
                f"cnn.pretrained=true), start from trained weights (ckpt_path=<an export or "
                f"the original project's checkpoint>), or set cnn.freeze_norm=false"
            )


def _last_conv_channels(layers: nn.Sequential) -> int:
    return [m for m in layers if isinstance(m, nn.Conv2d)][-1].out_channels


def vgg_features_filter(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """torchvision VGG keys (``features.<i>.*``) -> keys of our ``layers`` Sequential.

    A file of the features alone (``torch.save(vgg.features.state_dict())``: ``<i>.*``)
    already has those keys and is kept whole; any other file without ``features.*`` keys
    comes back empty, which :func:`load_vgg_weights` refuses by name."""
    if is_features_only(state_dict):
        return dict(state_dict)
    return {
        k.removeprefix("features."): v for k, v in state_dict.items() if k.startswith("features.")
    }


def is_features_only(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Keys ``<i>.<name>`` only: a saved ``features`` Sequential, unambiguously ours."""
    return bool(state_dict) and all(re.fullmatch(r"\d+\.\w+", k) for k in state_dict)


def vgg_hub_file(arch: str) -> Path:
    """Where torchvision caches ``arch``'s ImageNet weights (e.g. ``vgg19_bn-c79401a0.pth``)."""
    url = torchvision.models.get_model_weights(arch).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def load_vgg_weights(layers: nn.Module, path: str | Path) -> None:
    """Load torchvision VGG ImageNet weights into the (possibly truncated) feature layers."""
    raw = load_state_dict_file(path, "VGG", VGG_SOURCE, option="cnn.weights=",
                               pattern="vgg*")
    state = vgg_features_filter(raw)
    if not state:
        raise ValueError(f"VGG weights {path} has no features.* keys: not a torchvision VGG "
                         f"file (its first keys are {', '.join(list(raw)[:4])}); use "
                         f"{VGG_SOURCE}")
    if is_features_only(raw):
        log.info("%s holds a VGG's features alone (keys 0.weight, ...): loading them as is",
                 path)
    own = layers.state_dict()
    beyond = sorted(set(state) - set(own), key=lambda k: int(k.split(".")[0]))
    if beyond:
        log.info("%s: ignoring %d keys of layers beyond the last stage (%s..)",
                 path, len(beyond), beyond[0])
    state = {k: v for k, v in state.items() if k in own}
    # torchvision's VGG-BN files (2017) predate BatchNorm's num_batches_tracked buffer; torch
    # itself starts the count at zero for such files, and so do we.
    untracked = [k for k in own if k.endswith(".num_batches_tracked") and k not in state]
    if untracked:
        log.info("%s: no num_batches_tracked in %d BatchNorm layers (a file saved before "
                 "torch 0.4), counted from 0", path, len(untracked))
        state.update({k: torch.zeros_like(own[k]) for k in untracked})
    load_strict(layers, state, f"VGG weights {path}")
    log.info("loaded VGG weights from %s", path)
