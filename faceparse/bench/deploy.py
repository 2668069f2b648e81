"""The ``deploy`` bench section: onnxruntime CPU vs PyTorch CPU on the same net and inputs.

Both run in this process, in interleaved repeats (torch, onnx, torch, onnx, ...), so a
machine that gets busier half-way slows both alike; the median of the repeats is kept.
The ONNX file is a dynamic-size export of the configured net, checked for parity first.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from faceparse.deploy import check_parity, export_net, load_onnx_parser, parity_inputs
from faceparse.labels import get_scheme

__all__ = ["bench_deploy"]

log = logging.getLogger(__name__)


def _rate(run: Any, images: torch.Tensor, batch: int) -> float:
    start = time.perf_counter()
    for chunk in images.split(batch):
        run(chunk)
    return len(images) / (time.perf_counter() - start)


def bench_deploy(cfg: DictConfig) -> dict[str, Any]:
    """Images/s of the torch net (fp32, CPU) and its ONNX export (onnxruntime CPU)."""
    before = torch.get_num_threads()
    try:
        return _bench_deploy(cfg)
    finally:
        torch.set_num_threads(before)  # bench.deploy.threads must not leak to other sections


def _bench_deploy(cfg: DictConfig) -> dict[str, Any]:
    b, size = int(cfg.data.batch_size), int(cfg.data.image_size)
    steps, repeats = int(cfg.bench.steps), int(cfg.bench.deploy.repeats)
    threads = cfg.bench.deploy.threads
    if threads:
        torch.set_num_threads(int(threads))
    net = instantiate(cfg.model.net).eval()
    images = parity_inputs(b * steps, size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_net(net, path, "onnx", get_scheme(cfg.data.labels), size, dynamic=True)
        parser = load_onnx_parser(path, threads=threads)
        parity = check_parity(net, parser, images[:b])
        rates: dict[str, list[float]] = {"torch_cpu": [], "onnxruntime_cpu": []}
        with torch.inference_mode():
            for run in (net, parser):  # warm-up: allocator, onnxruntime's first-run planning
                run(images[:b])
            for _ in range(repeats):
                rates["torch_cpu"].append(_rate(net, images, b))
                rates["onnxruntime_cpu"].append(_rate(parser, images, b))
    result: dict[str, Any] = {
        "batch_size": b, "image_size": size, "images_per_repeat": len(images),
        "repeats": repeats, "torch_threads": torch.get_num_threads(),
        "onnxruntime_threads": threads or "default",
        "parity": parity.to_json(),
    }
    for name, values in rates.items():
        result[name] = {"images_per_s": statistics.median(values), "all": values}
        log.info("deploy %s: %.2f images/s (median of %d)", name, result[name]["images_per_s"],
                 repeats)
    result["onnx_vs_torch"] = (result["onnxruntime_cpu"]["images_per_s"]
                               / result["torch_cpu"]["images_per_s"])
    return result
