"""Where CPU inference time goes: VGG, ViT and decoder, the original's way against faceparse's.

    python scripts/cpu_parts.py --way original --vit-size large --size 256 --batch 2
    python scripts/cpu_parts.py --way faceparse --vit-size large --size 256 --batch 2

Random weights (speed does not depend on them). Each part is timed by forward hooks, not
``torch.profiler``, whose overhead on CPU is large enough to move the figures. Ways:
``original`` is the plain fp32 net, NCHW, BatchNorm unfolded, full softmax, glibc's default
allocator (the original project's predictor); ``faceparse`` is predict's fast path (the CPU
policy's precision and layout, folded BatchNorm, freed memory reused, labels only);
``faceparse-int8`` adds dynamic int8 for every linear layer of the ViT, an experiment
(deprecated ``torch.ao`` API, accuracy unchecked on real DINOv3 weights: BENCHMARKS.md).
Run one way per process and alternate processes: the allocator and the machine's noise
differ between processes by more than the parts differ.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

from faceparse.cli import register_resolvers
from faceparse.fast_path import inference_bf16
from faceparse.hardware import cpu_info
from faceparse.inference import prepare_for_inference

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
WAYS = ("original", "faceparse", "faceparse-int8")


def build_net(vit_size: str, size: int, way: str) -> nn.Module:
    """The bench's reference net with random weights, prepared as ``way`` runs it."""
    register_resolvers()
    overrides = [f"vit.size={vit_size}", f"data.image_size={size}", "trainer=cpu"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose("bench", overrides=overrides)
    net = instantiate(cfg.model.net).eval()
    if way == "original":
        return net
    net = prepare_for_inference(net, "cpu", instantiate(cfg.fast_path))
    if way == "faceparse-int8":
        net.encoder.vit = int8_linears(net.encoder.vit)
    return net


def int8_linears(vit: nn.Module) -> nn.Module:
    """Every linear layer of a timm EVA/DINOv3 ViT in dynamic int8.

    The attention adds its q/v bias inside ``F.linear(x, qkv.weight, bias)``, which a
    swapped module cannot serve; ``qkv_bias_separate`` makes it call ``qkv`` and add the
    bias after, the same arithmetic.
    """
    for module in vit.modules():
        if hasattr(module, "qkv_bias_separate"):
            module.qkv_bias_separate = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager torch.ao quantization is deprecated
        return torch.ao.quantization.quantize_dynamic(vit, {nn.Linear}, dtype=torch.qint8)


def time_parts(net: nn.Module, run: Callable[[], object], warmup: int,
               repeats: int) -> tuple[float, dict[str, float]]:
    """Seconds per batch for the whole net and for each part (mean over ``repeats``)."""
    parts = {"vgg": net.encoder.cnn, "vit": net.encoder.vit, "decoder": net.decoder}
    spent: dict[str, float] = defaultdict(float)
    started: dict[str, float] = {}
    for name, part in parts.items():
        part.register_forward_pre_hook(
            lambda _m, _a, name=name: started.__setitem__(name, time.perf_counter()))
        part.register_forward_hook(
            lambda _m, _a, _o, name=name: spent.__setitem__(
                name, spent[name] + time.perf_counter() - started[name]))
    with torch.inference_mode():
        for _ in range(warmup):
            run()
        spent.clear()
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        total = (time.perf_counter() - start) / repeats
    return total, {name: spent[name] / repeats for name in parts}


def run_batch(net: nn.Module, images: torch.Tensor, way: str) -> torch.Tensor:
    """One batch as ``way`` runs it: the original's fp32 softmax, or predict's labels under
    predict's autocast (bf16 on a CPU with fast bf16, as ``faceparse.predict`` runs it)."""
    if way == "original":
        return net(images).softmax(1)
    with torch.autocast("cpu", torch.bfloat16, enabled=inference_bf16("cpu")):
        return net(images).argmax(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--way", choices=WAYS, required=True)
    parser.add_argument("--vit-size", default="large", choices=("small", "base", "large"))
    parser.add_argument("--size", type=int, default=256, help="input side in pixels")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the CPU policy's line
    torch.manual_seed(0)
    net = build_net(args.vit_size, args.size, args.way)
    images = torch.randn(args.batch, 3, args.size, args.size)

    total, parts = time_parts(net, lambda: run_batch(net, images, args.way), args.warmup,
                              args.repeats)
    precision = "fp32" if args.way == "original" or not inference_bf16("cpu") else "bf16"
    print(f"cpu: {cpu_info().describe()}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.way} runs in {precision}")
    print(f"{args.way}, ViT-{args.vit_size}, {args.size} px, batch {args.batch}: "
          f"{total:.3f} s per batch, {args.batch / total:.3f} images/s | "
          + " ".join(f"{name} {seconds:.3f} s" for name, seconds in parts.items()))


if __name__ == "__main__":
    main()
