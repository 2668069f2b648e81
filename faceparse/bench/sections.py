"""The bench's sections, chosen by ``bench.sections``:

- ``data``: loader images/s with the train augmentation, per worker count;
- ``train``: images/s and peak memory of whole Lightning training steps (forward, backward,
  optimizer, with the trainer's precision and the fast path) on an in-memory batch, so the
  loader does not count;
- ``infer``: images/s and peak memory of :func:`faceparse.inference.predict`, labels only and
  with the full softmax, FLOPs per image and, on a GPU, model FLOPs utilisation.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from faceparse.bench.measure import PeakMemory, bench_bf16, sync
from faceparse.cpu_memory import reusing_freed_cpu_memory
from faceparse.data.synthetic import write_facesynthetics
from faceparse.fast_path import on_gpu
from faceparse.inference import predict, prepare_for_inference
from faceparse.inference.conv_relu import ConvReLU
from faceparse.inference.host_copies import overlaps
from faceparse.models.rope_attention import FusedRopeAttention

__all__ = ["bench_data", "bench_train", "bench_infer", "count_flops", "train_flops"]

log = logging.getLogger(__name__)
FACE_FILE_SIZE = 512  # FaceSynthetics' resolution


def _forever(loader: DataLoader) -> Iterator[dict]:
    while True:
        yield from loader


def bench_data(cfg: DictConfig) -> list[dict[str, Any]]:
    """Train-loader images/s per worker count, after one warm-up batch (worker start-up)."""
    with tempfile.TemporaryDirectory() as tmp:
        data_cfg = cfg.data.copy()
        if cfg.bench.data.write_faces > 0:
            write_facesynthetics(tmp, cfg.bench.data.write_faces, size=FACE_FILE_SIZE)
            with open_dict(data_cfg):
                data_cfg.root = tmp
        datamodule = instantiate(data_cfg)
        datamodule.datasets["train"] = datamodule.make_dataset("train")
        rows = []
        for workers in cfg.bench.data.workers:
            datamodule.num_workers = workers
            batches = _forever(datamodule.train_dataloader())
            next(batches)
            start, seen = time.perf_counter(), 0
            for _ in range(cfg.bench.data.batches):
                seen += next(batches)["image"].shape[0]
            rate = seen / (time.perf_counter() - start)
            batches.close()
            rows.append({"workers": workers, "images_per_s": rate})
            log.info("data: %d workers, %.1f images/s", workers, rate)
    return rows


class RepeatedBatch(Dataset):
    """One batch, ``length`` times: training steps timed without the loader's cost."""

    def __init__(self, batch: dict[str, torch.Tensor], length: int) -> None:
        self.batch = batch
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.batch


class StepTimer(L.Callback):
    """Times the training steps after ``warmup`` and their peak memory."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.first = self.start = self.end = 0.0
        self.timed = 0
        self.memory: PeakMemory | None = None

    @property
    def warmup_s(self) -> float:
        """Wall time of the untimed steps: where compilation and autotuning are paid."""
        return self.start - self.first

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            self.first = time.perf_counter()
        if batch_idx == self.warmup:
            sync(module.device)
            self.memory = PeakMemory(module.device).__enter__()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx >= self.warmup:
            sync(module.device)
            self.end = time.perf_counter()
            self.timed = batch_idx - self.warmup + 1
            if batch_idx == trainer.max_steps - 1:
                self.memory.__exit__(None, None, None)


def bench_train(cfg: DictConfig) -> dict[str, Any]:
    """Images/s and peak memory of training steps at the configured size and precision."""
    b, size, warmup, steps = (cfg.data.batch_size, cfg.data.image_size, cfg.bench.warmup,
                              cfg.bench.steps)
    module = instantiate(cfg.model)
    device = torch.device("cuda" if on_gpu(cfg.trainer.accelerator) else "cpu")
    flops = train_flops(module.to(device).net.train(), module.criterion, size,
                        module.scheme.num_classes, device)
    peak = _peak_tflops(cfg, device)
    batch = {"image": torch.randn(b, 3, size, size),
             "mask": torch.randint(0, module.scheme.num_classes, (b, size, size),
                                   dtype=torch.uint8)}
    timer = StepTimer(warmup)
    trainer: L.Trainer = instantiate(
        cfg.trainer, logger=False, callbacks=[timer], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, max_epochs=1,
        max_steps=warmup + steps, limit_val_batches=0, num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():  # a frozen ViT stays in eval mode on purpose
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        trainer.fit(module, train_dataloaders=DataLoader(RepeatedBatch(batch, warmup + steps),
                                                         batch_size=None))
    rate = timer.timed * b / (timer.end - timer.start)
    achieved = flops * rate / 1e12
    vit_bf16 = any(getattr(m, "compute_dtype", None) == torch.bfloat16
                   for m in module.net.modules())
    return {"batch_size": b, "image_size": size, "device": str(trainer.strategy.root_device),
            "precision": str(trainer.precision), "frozen_vit_bf16": vit_bf16,
            "fused_rope_attentions": _fused_rope_attentions(module.net),
            "steps": timer.timed,
            "images_per_s": rate, "warmup_s": timer.warmup_s, "peak_mib": timer.memory.mib,
            "memory": timer.memory.method,
            "train_gflops_per_image": flops / 1e9, "tflops": achieved,
            "mfu": achieved / peak if peak else None}


def count_flops(net: torch.nn.Module, image_size: int, device: torch.device) -> int:
    """Forward FLOPs for one image; attention in the math kernel so the counter sees it."""
    x = torch.randn(1, 3, image_size, image_size, device=device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), counter:
        net(x)
    return counter.get_total_flops()


def train_flops(net: torch.nn.Module, loss: Callable[..., torch.Tensor], image_size: int,
                num_classes: int, device: torch.device) -> int:
    """FLOPs of one training image: forward with aux heads, loss, backward (math SDPA)."""
    # two images: a training BatchNorm after global pooling needs more than one value
    x = torch.randn(2, 3, image_size, image_size, device=device)
    target = torch.randint(0, num_classes, (2, image_size, image_size), device=device)
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        logits, aux = net.forward_with_aux(x)
        loss(logits, aux, target)["loss"].backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops() // 2


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _peak_tflops(cfg: DictConfig, device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    table = cfg.bench.device_peak_bf16_tflops
    return cfg.bench.peak_tflops or table.get(torch.cuda.get_device_name(device))


def _fused_rope_attentions(net: nn.Module) -> int:
    """How many ViT attentions rotate q and k together (``fast_path.fused_rope``)."""
    return sum(isinstance(m, FusedRopeAttention) for m in net.modules())


def bench_infer(cfg: DictConfig) -> dict[str, Any]:
    """Images/s, peak memory, FLOPs and MFU of batched prediction; labels vs full softmax."""
    device = _device(cfg.bench.device)
    b, size, warmup, steps = (cfg.data.batch_size, cfg.data.image_size, cfg.bench.warmup,
                              cfg.bench.steps)
    fast_path = instantiate(cfg.fast_path)
    net = instantiate(cfg.model.net).eval().to(device)
    flops = count_flops(net, size, device)  # eager and fp32: before compile and autocast
    params_m = sum(p.numel() for p in net.parameters()) / 1e6
    images = torch.randn(b * steps, 3, size, size)
    with torch.inference_mode():  # the plain fp32 net's logits, to see what the fast path moves
        reference = net(images[:b].to(device)).float()
    bf16 = bench_bf16(cfg, device)
    start = time.perf_counter()
    net = prepare_for_inference(net, device, fast_path, bf16)  # the ViT in bf16 only then
    peak = _peak_tflops(cfg, device)
    overlap = overlaps(device, cfg.bench.overlap)
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
        fast = net(images[:b].to(device)).float()
    sync(device)
    first_batch_s = time.perf_counter() - start  # the rewrites and torch.compile pay here
    result: dict[str, Any] = {
        "batch_size": b, "image_size": size, "device": str(device),
        "precision": "bf16 autocast" if bf16 else "fp32",
        "channels_last": fast_path.wants_channels_last(device),
        "fold_batchnorm": fast_path.fold_batchnorm,
        "fold_layer_scale": fast_path.fold_layer_scale,
        "fused_conv_relus": sum(isinstance(m, ConvReLU) for m in net.modules()),
        # as the net holds it, not as the policy would have it
        "frozen_vit_bf16": any(p.dtype == torch.bfloat16 for p in net.parameters()),
        "fused_rope_attentions": _fused_rope_attentions(net),
        "overlap": overlap,
        # process-wide: an earlier section or variant may have switched it on
        "reuse_cpu_memory": reusing_freed_cpu_memory(),
        "params_m": params_m, "gflops_per_image": flops / 1e9, "peak_bf16_tflops": peak,
        # random weights and inputs: near-ties abound, so agreement here is a floor
        "vs_fp32": {"relative_logit_error": float((fast - reference).norm() / reference.norm()),
                    "label_agreement": float((fast.argmax(1) == reference.argmax(1))
                                             .float().mean())},
    }
    del reference, fast
    for mode, probs in (("labels", False), ("softmax", True)):
        start = time.perf_counter()
        for _ in range(warmup):
            predict(net, images[:b], b, probs=probs, bf16=bf16, overlap=overlap)
        sync(device)
        # untimed: compilation, autotuning, graph capture; labels also count the first batch
        warmup_s = time.perf_counter() - start + (first_batch_s if mode == "labels" else 0.0)
        with PeakMemory(device) as memory:
            start = time.perf_counter()
            predict(net, images, b, probs=probs, bf16=bf16, overlap=overlap)
            sync(device)
            elapsed = time.perf_counter() - start
        rate = len(images) / elapsed
        achieved = flops * rate / 1e12
        result[mode] = {"images_per_s": rate, "warmup_s": warmup_s, "peak_mib": memory.mib,
                        "memory": memory.method,
                        "tflops": achieved, "mfu": achieved / peak if peak else None}
        log.info("infer %s: %.2f images/s", mode, rate)
    return result


