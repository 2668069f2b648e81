"""The ``deploy`` bench section: onnxruntime CPU vs PyTorch CPU on the same net and inputs.

Three engines run in this process, in interleaved repeats (plain, fast path, onnx, plain,
...), so a machine that gets busier half-way slows all alike; the median is kept:
``torch_cpu`` is the plain fp32 net, ``torch_fast_path`` the net as ``faceparse.predict``
runs it on this CPU (``prepare_for_inference``: folded BatchNorm, the CPU policy's memory
format and precision) and ``onnxruntime_cpu`` a dynamic-size ONNX export of the plain net;
both are checked against the plain net's logits and labels first. Which engine wins
depends on the CPU (BENCHMARKS.md).
"""

from __future__ import annotations

import copy
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from faceparse.bench.measure import bench_bf16
from faceparse.cpu_memory import reusing_freed_cpu_memory
from faceparse.deploy import (
    ParityError,
    check_parity,
    export_net,
    load_onnx_parser,
    parity_inputs,
)
from faceparse.inference import prepare_for_inference
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
    bf16 = bench_bf16(cfg, "cpu")
    fast_net = prepare_for_inference(copy.deepcopy(net), "cpu", instantiate(cfg.fast_path),
                                     bf16)

    def fast_path(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            return fast_net(x)

    images = parity_inputs(b * steps, size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_net(net, path, "onnx", get_scheme(cfg.data.labels), size, dynamic=True)
        parser = load_onnx_parser(path, threads=threads)
        parity = check_parity(net, parser, images[:b])
        # the fast path's speed counts only if its labels are the plain net's (bf16: the
        # accuracy guard's 99.5%, its logits within bf16's error)
        try:
            fast_parity = check_parity(net, fast_path, images[:b], atol=0.5 if bf16 else 1e-3,
                                       min_agreement=0.995 if bf16 else 0.999)
        except ParityError as error:
            raise ParityError(f"predict's fast path ({'bf16' if bf16 else 'fp32'}) is not "
                              f"the plain net: {error}") from error
        engines = {"torch_cpu": net, "torch_fast_path": fast_path, "onnxruntime_cpu": parser}
        rates: dict[str, list[float]] = {name: [] for name in engines}
        with torch.inference_mode():
            for run in engines.values():  # warm-up: allocator, onnxruntime's first planning
                run(images[:b])
            for _ in range(repeats):
                for name, run in engines.items():
                    rates[name].append(_rate(run, images, b))
    result: dict[str, Any] = {
        "batch_size": b, "image_size": size, "images_per_repeat": len(images),
        "repeats": repeats, "torch_threads": torch.get_num_threads(),
        "onnxruntime_threads": threads or "default",
        "fast_path_precision": "bf16" if bf16 else "fp32",
        # process-wide, so the plain net's torch row shares it (onnxruntime has its arena)
        "reuse_cpu_memory": reusing_freed_cpu_memory(),
        "parity": parity.to_json(),
        "fast_path_parity": fast_parity.to_json(),
    }
    for name, values in rates.items():
        result[name] = {"images_per_s": statistics.median(values), "all": values}
        log.info("deploy %s: %.2f images/s (median of %d)", name, result[name]["images_per_s"],
                 repeats)
    onnx = result["onnxruntime_cpu"]["images_per_s"]
    result["onnx_vs_torch"] = onnx / result["torch_cpu"]["images_per_s"]
    result["onnx_vs_fast_path"] = onnx / result["torch_fast_path"]["images_per_s"]
    return result
