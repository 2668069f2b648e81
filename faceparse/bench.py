"""Benchmark loading, training and inference: ``python -m faceparse.bench [overrides]``.

Composes ``conf/bench.yaml`` (the training config plus a ``bench`` node), so every training
override changes what is measured. Sections, chosen by ``bench.sections``:

- ``data``: loader images/s with the train augmentation, per worker count;
- ``train``: images/s and peak memory of whole Lightning training steps (forward, backward,
  optimizer, with the trainer's precision and the module's speed-ups) on an in-memory batch,
  so the loader does not count;
- ``infer``: images/s and peak memory of :func:`faceparse.inference.predict`, labels only and
  with the full softmax, FLOPs per image and, on a GPU, model FLOPs utilisation.

Peak memory is ``torch.cuda.max_memory_allocated`` on a GPU. The CPU allocator keeps no peak,
so on a CPU it is the process's resident set, sampled every 5 ms (freed memory the C
allocator keeps counts too: run one section at a time for clean figures). Prints a table
and JSON, and writes ``bench.json`` to the run folder.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import timm
import torch
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from faceparse.bench_report import format_comparison, format_table
from faceparse.config import register_resolvers
from faceparse.data.synthetic import write_facesynthetics
from faceparse.inference import predict, prepare_for_inference

__all__ = ["PeakMemory", "run", "run_variants", "count_flops"]

log = logging.getLogger(__name__)
register_resolvers()
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
FACE_FILE_SIZE = 512  # FaceSynthetics' resolution


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of a block in MiB: CUDA allocator peak, or sampled CPU resident set."""

    def __init__(self, device: torch.device, interval_s: float = 0.005) -> None:
        self.device = device
        self.interval_s = interval_s
        self.peak = 0
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def method(self) -> str:
        return "cuda max_memory_allocated" if self.device.type == "cuda" else "cpu rss sampled"

    @property
    def mib(self) -> float:
        return self.peak / 2**20

    def _sample(self) -> None:
        while not self._done.wait(self.interval_s):
            self.peak = max(self.peak, _rss_bytes())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._done.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes())


def machine() -> dict[str, Any]:
    """What the figures came from: CPU, usable cores, threads, library versions, GPU."""
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    info = {"cpu": cpu, "cores_usable": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "timm": timm.__version__, "lightning": L.__version__,
            "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


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
        self.start = self.end = 0.0
        self.timed = 0
        self.memory: PeakMemory | None = None

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        if batch_idx == self.warmup:
            _sync(module.device)
            self.memory = PeakMemory(module.device).__enter__()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx >= self.warmup:
            _sync(module.device)
            self.end = time.perf_counter()
            self.timed = batch_idx - self.warmup + 1
            if batch_idx == trainer.max_steps - 1:
                self.memory.__exit__(None, None, None)


def bench_train(cfg: DictConfig) -> dict[str, Any]:
    """Images/s and peak memory of training steps at the configured size and precision."""
    b, size, warmup, steps = (cfg.data.batch_size, cfg.data.image_size, cfg.bench.warmup,
                              cfg.bench.steps)
    module = instantiate(cfg.model)
    batch = {"image": torch.randn(b, 3, size, size),
             "mask": torch.randint(0, module.scheme.num_classes, (b, size, size),
                                   dtype=torch.uint8)}
    timer = StepTimer(warmup)
    trainer: L.Trainer = instantiate(
        cfg.trainer, logger=False, callbacks=[timer], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, max_epochs=1,
        max_steps=warmup + steps, limit_val_batches=0, num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=DataLoader(RepeatedBatch(batch, warmup + steps),
                                                     batch_size=None))
    return {"batch_size": b, "image_size": size, "device": str(trainer.strategy.root_device),
            "precision": str(trainer.precision), "steps": timer.timed,
            "images_per_s": timer.timed * b / (timer.end - timer.start),
            "peak_mib": timer.memory.mib, "memory": timer.memory.method}


def count_flops(net: torch.nn.Module, image_size: int, device: torch.device) -> int:
    """Forward FLOPs for one image; attention in the math kernel so the counter sees it."""
    x = torch.randn(1, 3, image_size, image_size, device=device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), counter:
        net(x)
    return counter.get_total_flops()


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _peak_tflops(cfg: DictConfig, device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    table = cfg.bench.device_peak_bf16_tflops
    return cfg.bench.peak_tflops or table.get(torch.cuda.get_device_name(device))


def bench_infer(cfg: DictConfig) -> dict[str, Any]:
    """Images/s, peak memory, FLOPs and MFU of batched prediction; labels vs full softmax."""
    device = _device(cfg.bench.device)
    b, size, warmup, steps = (cfg.data.batch_size, cfg.data.image_size, cfg.bench.warmup,
                              cfg.bench.steps)
    net = instantiate(cfg.model.net).eval().to(device)
    flops = count_flops(net, size, device)  # eager and fp32: before compile and autocast
    net = prepare_for_inference(net, device, cfg.model.channels_last, cfg.bench.compile,
                                cfg.model.cudnn_benchmark)
    images = torch.randn(b * steps, 3, size, size)
    peak = _peak_tflops(cfg, device)
    bf16 = device.type == "cuda" if cfg.bench.bf16 is None else cfg.bench.bf16
    result: dict[str, Any] = {
        "batch_size": b, "image_size": size, "device": str(device),
        "precision": "bf16 autocast" if bf16 else "fp32",
        "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
        "gflops_per_image": flops / 1e9, "peak_bf16_tflops": peak,
    }
    for mode, probs in (("labels", False), ("softmax", True)):
        for _ in range(warmup):
            predict(net, images[:b], b, probs=probs, bf16=bf16)
        with PeakMemory(device) as memory:
            start = time.perf_counter()
            predict(net, images, b, probs=probs, bf16=bf16)
            _sync(device)
            elapsed = time.perf_counter() - start
        rate = len(images) / elapsed
        achieved = flops * rate / 1e12
        result[mode] = {"images_per_s": rate, "peak_mib": memory.mib, "memory": memory.method,
                        "tflops": achieved, "mfu": achieved / peak if peak else None}
        log.info("infer %s: %.2f images/s", mode, rate)
    return result


SECTIONS: dict[str, Callable[[DictConfig], Any]] = {
    "data": bench_data, "train": bench_train, "infer": bench_infer,
}


def run(cfg: DictConfig, overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the sections ``bench.sections`` names; return their figures with the machine's.

    ``overrides`` are recorded as the command (default: this process's arguments).
    """
    unknown = [s for s in cfg.bench.sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown bench sections {unknown}; choose from {list(SECTIONS)}")
    torch.manual_seed(cfg.seed)
    results: dict[str, Any] = {
        "machine": machine(), "command": " ".join(["python -m faceparse.bench",
                             *(sys.argv[1:] if overrides is None else overrides)]),
        "net": OmegaConf.to_container(cfg.model.net, resolve=True),
    }
    for name in cfg.bench.sections:
        _free_memory()  # what the previous section or variant left must not count
        results[name] = SECTIONS[name](cfg)
    return results


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _selects_variants(override: str) -> bool:
    """``compare=...``, ``bench.compare...=``, ``~bench.compare.x``: not for the variants."""
    key = _override_key(override)
    return key == "compare" or key.split(".")[:2] == ["bench", "compare"]


def run_variants(
    overrides: Sequence[str],
    variants: Mapping[str, Sequence[str]],
    on_result: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the bench again for each variant: ``overrides`` plus the variant's own.

    A variant's override replaces the command's for the same key, so a variant can narrow
    ``bench.sections`` or switch one option off. A variant that fails is logged and kept
    as ``{"error": ...}`` so the others still run; ``on_result`` sees each as it finishes.
    Needs Hydra initialised (the entry point, or ``initialize_config_dir``).
    """
    results: dict[str, dict[str, Any]] = {}
    for name, extra in variants.items():
        replaced = {_override_key(o) for o in extra}
        kept = [o for o in overrides
                if _override_key(o) not in replaced and not _selects_variants(o)]
        log.info("variant %s: %s", name, " ".join(extra))
        try:
            variant_overrides = [*kept, *extra]
            results[name] = run(compose("bench", overrides=variant_overrides), variant_overrides)
        except Exception as error:  # one broken option must not lose the other figures
            log.exception("variant %s failed", name)
            results[name] = {"error": f"{type(error).__name__}: {error}"}
        if on_result is not None:
            on_result(name, results[name])
    return results


def _save(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=2) + "\n")


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench")
def main(cfg: DictConfig) -> None:
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results = run(cfg)
    save = partial(_save, output_dir / "bench.json", results)
    save()  # after every run, so a comparison stopped half-way keeps its figures
    if cfg.bench.compare:
        results["compare"] = {}

        def keep(name: str, variant: dict[str, Any]) -> None:
            results["compare"][name] = variant
            save()

        variants = OmegaConf.to_container(cfg.bench.compare, resolve=True)
        run_variants(HydraConfig.get().overrides.task, variants, on_result=keep)
    print(json.dumps(results, indent=2))
    print(format_comparison(results) if "compare" in results else format_table(results))


if __name__ == "__main__":
    main()
