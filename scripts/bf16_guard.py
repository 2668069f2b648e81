"""bf16 accuracy guard on a trained checkpoint: do bf16 labels match fp32 labels?

    python scripts/bf16_guard.py CKPT [--images 64] [--batch 8]

Parses held-out synthetic faces at the checkpoint's training size three ways: fp32 (the
reference), bf16 autocast, and bf16 with the inference rewrites (BatchNorm folded, frozen
ViT weights stored in bf16: what a bf16 GPU runs). Prints the share of pixels whose label
matches fp32 and the mean F1 of each against the ground truth, with the CPU it ran on.
Issue 15's guard: agreement >= 99.5% and |F1 change| <= 0.002. bf16 is forced, so on a CPU
without hardware bf16 this is slow (emulated), but the numbers are the same.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from faceparse.checkpoints import load_face_parser, read_checkpoint
from faceparse.data.synthetic import SyntheticFaces
from faceparse.data.transforms import eval_transform
from faceparse.fast_path import FastPath
from faceparse.hardware import cpu_info
from faceparse.inference import predict, prepare_for_inference
from faceparse.metrics import SegmentationMetrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=123, help="held-out synthetic faces")
    parser.add_argument("--size", type=int, help="default: the checkpoint's training size")
    parser.add_argument("--render-size", type=int, help="synthetic faces' drawing size "
                        "(default: --size, as the quickstart draws them)")
    args = parser.parse_args()
    file = read_checkpoint(args.ckpt)
    size = args.size or (file.metadata or {}).get("image_size")
    if not size:
        parser.error(f"{args.ckpt} records no training image size: give --size")
    net, scheme = load_face_parser(file)
    faces = SyntheticFaces("val", transform=eval_transform(int(size)),
                           sizes={"val": args.images}, seed=args.seed,
                           render_size=args.render_size or int(size))
    images = torch.stack([faces[i]["image"] for i in range(len(faces))])
    target = torch.stack([faces[i]["mask"] for i in range(len(faces))]).long()
    plain = FastPath(channels_last=False, fold_batchnorm=False, fold_layer_scale=False,
                     frozen_vit_bf16=False)
    rewritten = FastPath(channels_last=False, fold_batchnorm=True, fold_layer_scale=True,
                         frozen_vit_bf16=True)
    runs = {"fp32": (prepare_for_inference(copy.deepcopy(net), "cpu", plain), False),
            "bf16 autocast": (prepare_for_inference(copy.deepcopy(net), "cpu", plain), True),
            "bf16 + folded BN and LayerScale + bf16 ViT weights":
                (prepare_for_inference(copy.deepcopy(net), "cpu", rewritten), True)}
    print(f"{args.ckpt}: {len(faces)} synthetic faces at {size} px, {scheme.name}; "
          f"CPU {cpu_info().describe()}, torch {torch.__version__}")
    reference = None
    for name, (model, bf16) in runs.items():
        start = time.perf_counter()
        labels = predict(model, images, args.batch, bf16=bf16).labels.long()
        seconds = time.perf_counter() - start
        metrics = SegmentationMetrics(scheme.num_classes)
        metrics.update(labels, target)
        f1 = metrics.compute()["f1_mean"].item()
        if reference is None:
            reference = (labels, f1)
        agreement = (labels == reference[0]).float().mean().item()
        print(f"{name:50s} pixels agreeing with fp32 {agreement:.4%}  F1 {f1:.4f} "
              f"(change {f1 - reference[1]:+.4f})  {seconds:.1f} s")


if __name__ == "__main__":
    main()
