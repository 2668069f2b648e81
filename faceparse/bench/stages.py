"""The reference net cut into the stages its forward runs, for the ``profile`` section.

VGG stages, the frozen ViT, fusion, each decoder level, the head and the aux heads, each a
:class:`Stage` over named tensors. Replayed in order they are ``forward_with_aux``
(:func:`check_replay` says by how much they differ), so each can be timed, or compiled,
on its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from faceparse.models.decoder import CoarseToFineDecoder
from faceparse.models.fusion import DualEncoder

__all__ = ["Stage", "Tensors", "check_replay", "compile_stages", "no_silent_eager_fallback",
           "reference_stages", "replay"]

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Stage:
    """One piece of the forward: reads ``inputs`` from the tensors so far, adds ``outputs``."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    run: Callable[..., Sequence[torch.Tensor]]
    trains: bool = True  # False: the frozen ViT (no backward)


def _vgg_segments(layers: nn.Sequential) -> list[nn.Sequential]:
    """VGG layers cut before each max-pool: the stages whose outputs the decoder reads."""
    cuts = [i for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)]
    bounds = [0, *cuts, len(layers)]
    return [layers[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def reference_stages(net: nn.Module, with_aux: bool = True) -> list[Stage]:
    """The forward of a VGG + ViT + coarse-to-fine net as stages over named tensors."""
    encoder, decoder = net.encoder, net.decoder
    if not isinstance(encoder, DualEncoder) or not isinstance(decoder, CoarseToFineDecoder):
        raise ValueError(
            f"the profile section cuts the reference net (DualEncoder + CoarseToFineDecoder); "
            f"this one is {type(encoder).__name__} + {type(decoder).__name__}: use "
            f"encoder=dual decoder=reference, or compare whole steps with the train/infer "
            f"sections"
        )
    segments = _vgg_segments(encoder.cnn.layers)
    taps = [f"cnn{s}" for s in encoder.cnn.strides]
    stages = [
        Stage(f"vgg stage {n + 1} (stride {encoder.cnn.strides[n]})",
              ("image",) if n == 0 else (taps[n - 1],), (taps[n],),
              lambda x, seg=seg: (seg(x),))
        for n, seg in enumerate(segments)
    ]
    stages.append(Stage("vit (frozen)", ("image",), ("vit",),
                        lambda x: tuple(encoder.vit(x)), trains=False))

    def fuse(*maps: torch.Tensor) -> Sequence[torch.Tensor]:
        *cnn_maps, vit_map = maps
        fine = list(cnn_maps[: len(encoder.strides) - 1])
        for stride, inject in encoder.vit_into.items():
            at = encoder.strides.index(int(stride))
            fine[at] = inject(fine[at], vit_map)
        cnn16 = cnn_maps[-1] if len(cnn_maps) == len(encoder.strides) else None
        return (*fine, encoder.fusion(cnn16, vit_map))

    features = ("f1", "f2", "f4", "f8", "f16")
    stages.append(Stage("fusion", (*taps, "vit"), features, fuse))
    d = decoder
    stages += [
        Stage("decoder adapters", features, ("a1", "a2", "a4", "a8", "a16"),
              lambda f1, f2, f4, f8, f16: (d.adapt_scale1(f1), d.adapt_scale2(f2),
                                           d.adapt_scale4(f4), d.adapt_scale8(f8),
                                           d.arm16(d.adapt_scale16(f16)))),
        Stage("decoder level 16->8", ("a16", "a8"), ("d8",),
              lambda a16, a8: (d.ffm_8(d.ctf_16_8(a16, a8), a8),)),
        Stage("decoder level 8->4", ("d8", "a4"), ("d4",),
              lambda d8, a4: (d.ffm_4(d.ctf_8_4(d8, a4), a4),)),
        Stage("decoder level 4->2", ("d4", "a2"), ("d2",),
              lambda d4, a2: (d.ffm_2(d.ctf_4_2(d4, a2), a2),)),
        Stage("decoder level 2->1", ("d2", "a1"), ("d1",),
              lambda d2, a1: (d.ffm_1(d.ctf_2_1(d2, a1), a1),)),
        Stage("decoder head", ("d1",), ("logits",), lambda d1: (d.final_conv(d1),)),
    ]
    if with_aux:
        def aux(logits: torch.Tensor, d8: torch.Tensor, d4: torch.Tensor,
                d2: torch.Tensor) -> Sequence[torch.Tensor]:
            size = logits.shape[-2:]
            return tuple(
                nn.functional.interpolate(head(x), size=size, mode="bilinear",
                                          align_corners=False)
                for head, x in ((d.aux_head_8, d8), (d.aux_head_4, d4), (d.aux_head_2, d2)))

        stages.append(Stage("aux heads", ("logits", "d8", "d4", "d2"),
                            ("aux8", "aux4", "aux2"), aux))
    return stages


# a stage's outputs are kept for its backward while it runs again, which a CUDA-graph replay
# would overwrite: stages compile in the same mode without graphs
GRAPH_FREE_MODES = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}


def compile_stages(stages: Sequence[Stage], mode: str) -> list[Stage]:
    """Each stage under its own ``torch.compile`` (CUDA-graph modes without the graphs)."""
    mode = GRAPH_FREE_MODES.get(mode, mode)
    return [dataclasses.replace(s, run=torch.compile(s.run, mode=mode)) for s in stages]


@contextmanager
def no_silent_eager_fallback() -> Iterator[None]:
    """Room for every stage's graphs, and an error rather than eager code past the limit.

    Stages share code (the VGG stages one lambda), and each grad mode is another graph;
    past dynamo's recompile limit it would run the rest eagerly without a word, and the
    profile would time eager code under a compiled label.
    """
    with torch._dynamo.config.patch(recompile_limit=64, fail_on_recompile_limit_hit=True):
        yield


def replay(stages: Sequence[Stage], tensors: Tensors) -> Tensors:
    """Run the stages in order, each on what earlier stages wrote into ``tensors``."""
    for stage in stages:
        outputs = stage.run(*(tensors[k] for k in stage.inputs))
        tensors.update(zip(stage.outputs, outputs, strict=True))
    return tensors


def check_replay(net: nn.Module, stages: Sequence[Stage], image: torch.Tensor) -> float:
    """Largest |logit difference| between the stages and ``forward_with_aux`` (eval mode)."""
    net.eval()
    with torch.inference_mode():
        logits, _ = net.forward_with_aux(image)
        replayed = replay(stages, {"image": image})["logits"]
    return float((logits.float() - replayed.float()).abs().max())
