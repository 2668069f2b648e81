"""The benchmark composes with training overrides and reports every section; figures are
checked for shape and sense only (speed targets live in BENCHMARKS.md, not in tests)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from torch import nn

from faceparse.bench import PeakMemory, _rss_bytes, count_flops, run, run_variants
from faceparse.bench_report import format_comparison, format_table

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
TINY = [
    "encoder.cnn.arch=vgg11_bn", "encoder.vit.size=small", "decoder.decoder_channels=32",
    "data.image_size=32", "bench.warmup=1", "bench.steps=1", "bench.data.workers=[0]",
    "bench.data.batches=2", "bench.data.write_faces=4", "trainer.accelerator=cpu",
]

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def compose_bench(tmp_path: Path, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("bench", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.output_dir = str(tmp_path)
    return cfg


def test_bench_defaults_are_the_reference_model_at_a_small_size(tmp_path: Path) -> None:
    cfg = compose_bench(tmp_path, [])
    assert cfg.encoder.cnn.arch == "vgg19_bn" and cfg.encoder.vit.size == "large"
    assert cfg.data.image_size == 128 and cfg.bench.sections == ["data", "train", "infer"]
    assert "FaceSynthetics" in cfg.data.dataset._target_


def test_bench_runs_every_section(tmp_path: Path) -> None:
    results = run(compose_bench(tmp_path, TINY))
    assert results["machine"]["torch"] == torch.__version__
    (data,) = results["data"]
    assert data["workers"] == 0 and data["images_per_s"] > 0
    train, infer = results["train"], results["infer"]
    assert train["precision"] == "32-true" and train["steps"] == 1
    assert train["images_per_s"] > 0 and train["peak_mib"] > 0
    assert infer["precision"] == "fp32" and infer["gflops_per_image"] > 0
    for mode in ("labels", "softmax"):
        assert infer[mode]["images_per_s"] > 0 and infer[mode]["mfu"] is None
    table = format_table(results)
    assert table.count("\ninfer") == 2 and "workers=0" in table


def test_unknown_section_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown bench sections"):
        run(compose_bench(tmp_path, [*TINY, "bench.sections=[trian]"]))


def test_variants_rerun_with_their_overrides_and_survive_failures(tmp_path: Path) -> None:
    overrides = [*TINY, f"paths.output_dir={tmp_path}", "bench.sections=[infer]"]
    results = run(compose_bench(tmp_path, overrides))
    seen = []
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        variants = run_variants(
            [*overrides, "compare=fast_path", "~bench.compare.compiled"],
            {"explicit_attention": ["encoder.vit.fused_attn=false", "bench.bf16=false"],
             "broken": ["bench.sections=[trian]"]},
            on_result=lambda name, result: seen.append(name),
        )
    assert seen == ["explicit_attention", "broken"]
    explicit = variants["explicit_attention"]
    assert explicit["net"]["encoder"]["vit"]["fused_attn"] is False
    assert set(explicit) == {"machine", "command", "net", "infer"}  # the command's sections
    assert "compare" not in explicit  # the command's compare=... is not run again
    assert explicit["command"].endswith("encoder.vit.fused_attn=false bench.bf16=false")
    assert "unknown bench sections" in variants["broken"]["error"]
    results["compare"] = variants
    table = format_comparison(results).splitlines()
    assert [row.split()[:3] for row in table[1:4]] == [
        ["baseline", "infer", "labels"], ["baseline", "infer", "softmax"],
        ["explicit_attention", "infer", "labels"]]
    assert table[-1].split()[:2] == ["broken", "failed"]


def test_flops_count_convolutions_and_attention() -> None:
    conv = nn.Conv2d(3, 4, 1, bias=False)
    assert count_flops(conv, 16, torch.device("cpu")) == 2 * 3 * 4 * 16 * 16

    class Attention(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q = x.flatten(2).transpose(1, 2)[:, None]  # (1, 1, HW, 3)
            return torch.nn.functional.scaled_dot_product_attention(q, q, q)

    tokens = 16 * 16
    assert count_flops(Attention(), 16, torch.device("cpu")) >= 2 * 2 * tokens * tokens * 3


def test_cpu_peak_memory_keeps_the_highest_resident_set_seen() -> None:
    with PeakMemory(torch.device("cpu"), interval_s=0.001) as memory:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        during = _rss_bytes()
        time.sleep(0.02)  # torch ops release the GIL for the sampler; a test must yield it
        del block
    assert memory.method == "cpu rss sampled" and memory.peak >= during
