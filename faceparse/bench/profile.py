"""The ``profile`` bench section: where a training step and an inference batch spend time.

The reference net (VGG + DINOv3 ViT through the coarse-to-fine decoder) is cut into the
stages its forward runs (VGG stages, ViT, fusion, decoder levels, heads, loss), and each
stage is timed alone, forward and backward, on the tensors the real forward hands it, with
the precision ``bench.bf16`` gives (for the training step too, not ``trainer.precision``:
the result records it) and the fast path's memory format. The stages replay
``forward_with_aux`` exactly (checked on every run), so their times add up to the step's,
less the optimizer and launch gaps. The ViT's blocks are timed in place, and
``torch.profiler`` sorts the GPU kernels of whole steps into matrix work (tensor cores)
and the memory-bound rest. The inference batch runs on a copy of the net as predict
prepares it, BatchNorm folded where the fast path folds it: timing the training net's
BatchNorms there would charge inference for kernels predict never runs.

With ``fast_path.compile=true`` the whole steps run compiled as training and predict
compile them, and each stage is compiled on its own: what is left after fusion, stage by
stage (fusion across a stage's border is lost, so the stages may sum to more than the step).
``bench.profile.stages=false`` keeps the whole steps, kernel classes and ViT blocks and skips
the stages: compiled, only the training and inference nets compile, not each stage too.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from faceparse.bench.ceiling import MFU_TARGETS, mfu_ceiling
from faceparse.bench.kernels import kernel_breakdown
from faceparse.bench.measure import bench_bf16, sync
from faceparse.bench.sections import _device, _peak_tflops, count_flops, train_flops
from faceparse.bench.stages import (
    Stage,
    Tensors,
    check_replay,
    compile_stages,
    no_silent_eager_fallback,
    reference_stages,
    replay,
)
from faceparse.fast_path import FastPath
from faceparse.inference import prepare_for_inference
from faceparse.models.dinov3 import frozen_vits_to_bf16
from faceparse.training.optim import build_optimizer

__all__ = ["bench_profile"]

def _timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    """Milliseconds of one call: CUDA events on a GPU, a synchronised clock elsewhere."""
    def run(work: Callable[[], Any]) -> float:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            work()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        begin = time.perf_counter()
        work()
        return (time.perf_counter() - begin) * 1e3
    return run


def _median(times: list[float]) -> float:
    return statistics.median(times)


def time_stages(stages: Sequence[Stage], tensors: Tensors, loss: Callable[..., torch.Tensor]
                | None, device: torch.device, bf16: bool, repeats: int) -> list[dict[str, Any]]:
    """Median forward (and, with ``loss``, backward) milliseconds of each stage alone."""
    timer = _timer(device)
    training = loss is not None
    rows = []
    cases: list[tuple[str, Callable[..., Sequence[torch.Tensor]], tuple[str, ...], bool]] = [
        (s.name, s.run, s.inputs, s.trains) for s in stages]
    if training:
        cases.append(("loss", lambda *xs: (loss(*xs),),
                      ("logits", "aux8", "aux4", "aux2", "target"), True))
    for name, run, inputs, trains in cases:
        args = [tensors[k].detach().requires_grad_(
                    training and trains and k not in ("image", "vit", "target")
                    and tensors[k].is_floating_point()) for k in inputs]
        grad = training and trains
        context = (torch.enable_grad if grad else torch.inference_mode)

        def forward(run: Callable[..., Sequence[torch.Tensor]] = run,
                    args: list[torch.Tensor] = args,
                    context: Callable[[], Any] = context) -> Sequence[torch.Tensor]:
            with context(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                return run(*args)

        forward()  # warm-up: cuDNN algorithm choice, allocator
        fwd = _median([timer(forward) for _ in range(repeats)])
        row: dict[str, Any] = {"stage": name, "forward_ms": fwd}
        if grad:
            backs = []
            for _ in range(repeats + 1):
                # outputs passed through from the frozen ViT take no gradient
                outs = [o for o in forward() if o.requires_grad]
                grads = [torch.randn_like(o) if o.ndim else None for o in outs]

                def backward(outs: list[torch.Tensor] = outs,
                             grads: list[torch.Tensor | None] = grads) -> None:
                    if outs:
                        torch.autograd.backward(outs, grads)

                backs.append(timer(backward))
                for a in args:
                    a.grad = None
            row["backward_ms"] = _median(backs[1:])
        rows.append(row)
    return rows


def _stage_times(stages: Sequence[Stage], image: torch.Tensor, target: torch.Tensor | None,
                 loss: Callable[..., torch.Tensor], device: torch.device, bf16: bool,
                 repeats: int) -> list[dict[str, Any]]:
    """Each stage timed alone on what the stages before it hand it; with ``target``, as in a
    training step (backward, loss), else as in an inference batch."""
    context = torch.no_grad if target is not None else torch.inference_mode
    with context(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
        tensors = replay(stages, {"image": image})
    if target is not None:
        tensors["target"] = target
    return time_stages(stages, tensors, loss if target is not None else None, device, bf16,
                       repeats)


def time_vit_blocks(vit: nn.Module, image: torch.Tensor, device: torch.device, bf16: bool
                    ) -> dict[str, Any]:
    """Milliseconds of each ViT block inside one real ViT forward (CUDA events in hooks)."""
    blocks = list(vit.model.blocks)
    marks: dict[int, list[Any]] = {}

    def mark(i: int, slot: int) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            if device.type == "cuda":
                event = torch.cuda.Event(enable_timing=True)
                event.record()
            else:
                event = time.perf_counter()
            marks.setdefault(i, [None, None])[slot] = event
        return hook

    handles = []
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(mark(i, 0)))
        handles.append(block.register_forward_hook(mark(i, 1)))
    timer = _timer(device)
    try:
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            vit(image)  # warm-up
            total = timer(lambda: vit(image))
    finally:
        for handle in handles:
            handle.remove()
    sync(device)
    if device.type == "cuda":
        per_block = [start.elapsed_time(end) for start, end in marks.values()]
    else:
        per_block = [(end - start) * 1e3 for start, end in marks.values()]
    return {"blocks": len(blocks), "whole_vit_ms": total, "blocks_ms": sum(per_block),
            "block_mean_ms": statistics.mean(per_block), "block_max_ms": max(per_block),
            "outside_blocks_ms": total - sum(per_block)}


def _batchnorms(net: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())


def _time_optimizer(train_step: Callable[[], None], optimizer: torch.optim.Optimizer,
                    timer: Callable[[Callable[[], Any]], float], repeats: int) -> float:
    """Median milliseconds of the optimizer step alone, on real gradients."""
    times = []
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for _ in range(repeats):
        train_step()  # leaves no gradients: make some
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        times.append(timer(optimizer.step))
        optimizer.zero_grad(set_to_none=True)
    return _median(times)


def bench_profile(cfg: DictConfig) -> dict[str, Any]:
    """Per-stage forward/backward times, ViT blocks, kernel classes, FLOPs and MFU."""
    with no_silent_eager_fallback():
        return _profile(cfg)


def _profile(cfg: DictConfig) -> dict[str, Any]:
    each_stage = OmegaConf.select(cfg, "bench.profile.stages", default=True)
    if not isinstance(each_stage, bool):
        raise ValueError(f"bench.profile.stages={each_stage!r}: use true (time each stage "
                         f"alone) or false (whole steps only)")
    device = _device(cfg.bench.device)
    b, size = cfg.data.batch_size, cfg.data.image_size
    repeats, steps = max(3, cfg.bench.steps), cfg.bench.steps
    module = instantiate(cfg.model).to(device)
    net, criterion = module.net, module.criterion
    num_classes = module.scheme.num_classes
    fwd_flops = count_flops(net.eval(), size, device)
    step_flops = train_flops(net.train(), criterion, size, num_classes, device)
    fast_path: FastPath = instantiate(cfg.fast_path)
    bf16 = bench_bf16(cfg, device)
    # as training stores it (and inference, where it runs bf16): both steps see the same net
    vit_bf16 = (fast_path.wants_frozen_vit_bf16_in_training("bf16-mixed" if bf16 else "32-true")
                and frozen_vits_to_bf16(net) > 0)
    eager = dataclasses.replace(fast_path, compile=False, compile_mode="default",
                                compile_scope="parts")
    eager.apply(net, device)
    peak = _peak_tflops(cfg, device)
    torch.manual_seed(cfg.seed)
    image = torch.randn(b, 3, size, size, device=device)
    target = torch.randint(0, num_classes, (b, size, size), device=device)
    if wants_cl := fast_path.wants_channels_last(device):
        image = image.contiguous(memory_format=torch.channels_last)
    stages = reference_stages(net)
    infer_net = prepare_for_inference(copy.deepcopy(net), device, eager)
    folded = _batchnorms(net) - _batchnorms(infer_net)
    infer_stages = reference_stages(infer_net, with_aux=False)
    replay_error = max(check_replay(net, stages[:-1], image[:1]),  # the cuts, eager
                       check_replay(infer_net, infer_stages, image[:1]))
    if fast_path.compile:
        fast_path.apply(net, device)
        fast_path.apply(infer_net, device)
        if each_stage:
            stages = compile_stages(stages, fast_path.compile_mode)
            infer_stages = compile_stages(infer_stages, fast_path.compile_mode)

    def loss(logits: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        *aux, target = rest
        return criterion(logits, aux, target)["loss"]

    optimizer = build_optimizer(module.optimizer_factory, module)
    timer = _timer(device)

    def train_step() -> None:
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            logits, aux = net.forward_with_aux(image)
            value = criterion(logits, aux, target)["loss"]
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def infer_batch() -> None:
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            infer_net(image).argmax(1)

    result: dict[str, Any] = {
        "batch_size": b, "image_size": size, "device": str(device), "bf16": bf16,
        "channels_last": wants_cl, "frozen_vit_bf16": vit_bf16,
        "infer_batchnorms_folded": folded, "repeats": repeats,
        "compiled": fast_path.compile,
        "compile_mode": fast_path.compile_mode if fast_path.compile else None,
        "compile_scope": fast_path.compile_scope if fast_path.compile else None,
        "forward_gflops_per_image": fwd_flops / 1e9,
        "train_gflops_per_image": step_flops / 1e9, "peak_bf16_tflops": peak,
        "replay_max_abs_logit_diff": replay_error,
    }
    for mode, work, flops in (("train", train_step, step_flops), ("infer", infer_batch,
                                                                  fwd_flops)):
        training = mode == "train"
        net.train(training)
        work()
        whole = _median([timer(work) for _ in range(repeats)])
        rate = b / whole * 1e3
        achieved = flops * rate / 1e12
        rows = (_stage_times(stages if training else infer_stages, image,
                             target if training else None, loss, device, bf16, repeats)
                if each_stage else [])
        staged = sum(r["forward_ms"] + r.get("backward_ms", 0.0) for r in rows) if rows else None
        for r in rows:
            r["share"] = (r["forward_ms"] + r.get("backward_ms", 0.0)) / whole
        part: dict[str, Any] = {"whole_ms": whole, "images_per_s": rate, "tflops": achieved,
                                "mfu": achieved / peak if peak else None, "stages": rows,
                                "stages_sum_ms": staged}
        if mode == "train":
            part["optimizer_ms"] = _time_optimizer(train_step, optimizer, timer, repeats)
        part["kernels"] = kernel_breakdown(work, device, steps=min(steps, 3))
        part["ceiling"] = mfu_ceiling(part, flops, b, peak, MFU_TARGETS[mode])
        result[mode] = part
    result["vit_blocks"] = time_vit_blocks(net.encoder.vit, image, device, bf16)
    return result
