"""``scripts/cpu_parts.py``: the per-part CPU timing behind BENCHMARKS' floor sections."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cpu_parts.py"


@pytest.fixture(scope="module")
def cpu_parts():
    spec = importlib.util.spec_from_file_location("cpu_parts", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_int8_swaps_every_vit_linear_and_keeps_its_arithmetic(cpu_parts) -> None:
    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch16_dinov3_qkvb", pretrained=False, img_size=32,
                            num_classes=0).eval()
    for block in vit.blocks:  # LayerScale near 0 would hide any error: make blocks count
        block.gamma_1.data.fill_(1.0)
        block.gamma_2.data.fill_(1.0)
        block.attn.q_bias.data.normal_()  # and biases that matter (timm starts them at 0)
        block.attn.v_bias.data.normal_()
    images = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        reference = vit.forward_features(images)
        quantized = cpu_parts.int8_linears(vit)
        approx = quantized.forward_features(images)
    assert not any(type(m) is nn.Linear for m in quantized.blocks.modules())
    assert all(block.attn.qkv_bias_separate for block in quantized.blocks)
    # int8's error (measured 0.020), not a lost bias: dropping the q/v biases moves these
    # features by 1.09
    error = (approx - reference).norm() / reference.norm()
    assert error < 0.05, error


@pytest.mark.slow  # a whole command, end to end: in CI's slow suite
def test_script_times_each_part_as_a_user_runs_it() -> None:
    way = "faceparse-int8"  # the way with most steps: predict's fast path, then int8
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--way", way, "--vit-size", "small", "--size", "32",
         "--batch", "1", "--warmup", "1", "--repeats", "1"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("cpu: ")
    line = re.search(rf"{way}, ViT-small, 32 px, batch 1: ([0-9.]+) s per batch, "
                     r"[0-9.]+ images/s \| vgg ([0-9.]+) s vit ([0-9.]+) s decoder ([0-9.]+) s",
                     result.stdout)
    assert line, result.stdout
    total, *parts = map(float, line.groups())
    assert all(p > 0 for p in parts)
    assert sum(parts) <= total + 0.002  # each figure rounded to 3 decimals


def test_faceparse_ways_run_in_predicts_precision(cpu_parts, monkeypatch) -> None:
    """On a CPU with fast bf16, predict runs under bf16 autocast: so does the script's
    faceparse way (it timed a mixed fp32/bf16 net predict never runs); the original's way
    stays fp32."""
    dtypes: list[torch.dtype] = []
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    for conv in (net[0], net[2]):
        conv.register_forward_hook(lambda _m, _a, out: dtypes.append(out.dtype))
    images = torch.randn(1, 3, 8, 8)
    monkeypatch.setattr(cpu_parts, "inference_bf16", lambda device: True)
    with torch.inference_mode():
        labels = cpu_parts.run_batch(net, images, "faceparse")
        assert dtypes == [torch.bfloat16] * 2 and labels.shape == (1, 6, 6)
        dtypes.clear()
        probs = cpu_parts.run_batch(net, images, "original")
    assert dtypes == [torch.float32] * 2 and probs.dtype == torch.float32
