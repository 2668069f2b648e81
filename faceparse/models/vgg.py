"""The CNN branch: torchvision's VGG-BN ``features`` tapped just before each max-pool.

Weights are torchvision's ImageNet files (``vgg19_bn-c79401a0.pth``), read from a given
path or the torch hub cache; nothing is downloaded. The layer list keeps torchvision's
indices, so the original FaceParsing project's ``encoder.cnn.layers.<i>`` keys load as
they are.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
import torchvision
from torch import nn

from faceparse.models.base import Encoder
from faceparse.models.weights import StateDict, load_state_dict_file, load_strict

log = logging.getLogger(__name__)

__all__ = ["VggEncoder", "vgg_features_filter", "vgg_hub_file", "load_vgg_weights"]

VGG_SOURCE = "torchvision's vgg19_bn ImageNet weights (vgg19_bn-c79401a0.pth)"


class VggEncoder(Encoder):
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
                    f"cnn.pretrained=true but {weights.name} is not in the torch hub cache "
                    f"{weights.parent}, and faceparse does not download. Copy the file there "
                    f"(or set cnn.weights=<path>); on a machine online, "
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


def vgg_features_filter(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """torchvision VGG keys (``features.<i>.*``) -> keys of our ``layers`` Sequential."""
    return {
        k.removeprefix("features."): v for k, v in state_dict.items() if k.startswith("features.")
    }


def vgg_hub_file(arch: str) -> Path:
    """Where torchvision caches ``arch``'s ImageNet weights (e.g. ``vgg19_bn-c79401a0.pth``)."""
    url = torchvision.models.get_model_weights(arch).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def load_vgg_weights(layers: nn.Module, path: str | Path) -> None:
    """Load torchvision VGG ImageNet weights into the (possibly truncated) feature layers."""
    state = vgg_features_filter(load_state_dict_file(path, "VGG", VGG_SOURCE))
    own = layers.state_dict()
    beyond = sorted(set(state) - set(own), key=lambda k: int(k.split(".")[0]))
    if beyond:
        log.info("%s: ignoring %d keys of layers beyond the last stage (%s..)",
                 path, len(beyond), beyond[0])
    load_strict(layers, {k: v for k, v in state.items() if k in own}, f"VGG weights {path}")
    log.info("loaded VGG weights from %s", path)
