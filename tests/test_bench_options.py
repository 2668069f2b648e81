"""The bench measures what it says it measures, and refuses options it cannot use in one
line before any measurement."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_bench import TINY

from faceparse.bench.__main__ import check_bench_options
from faceparse.bench.sections import bench_infer

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture
def bench_cfg(compose, tmp_path: Path):
    return lambda *overrides: compose([*TINY, *overrides], config="bench",
                                      output_dir=tmp_path)


@pytest.mark.parametrize(("override", "message"), [
    ("bench.sections=[trian]", "bench.sections=[trian]: a list of sections, from data, "),
    ("bench.device=nosuch", "bench.device=nosuch: not a device"),
    ("bench.steps=0", "bench.steps=0: the timed steps per measurement is a whole number"),
    ("bench.warmup=-1", "bench.warmup=-1: the untimed steps first is a whole number"),
    ("bench.bf16=maybe", "bench.bf16=maybe: use true or false"),
])
def test_a_bad_bench_option_is_refused_before_any_measurement(bench_cfg, override, message):
    with pytest.raises(ValueError) as refused:
        check_bench_options(bench_cfg(override))
    assert str(refused.value).startswith(message)


def test_a_bad_cpu_switch_is_refused_too(bench_cfg, monkeypatch):
    monkeypatch.setenv("FACEPARSE_CPU_BF16", "maybe")
    with pytest.raises(ValueError, match="FACEPARSE_CPU_BF16='maybe': use 1"):
        check_bench_options(bench_cfg())


@pytest.mark.parametrize("bf16", [False, True])
def test_an_fp32_bench_keeps_the_frozen_vit_in_fp32(bench_cfg, bf16):
    """bench.bf16=false measured the ViT in bf16 (the device's policy) and called it fp32."""
    result = bench_infer(bench_cfg(f"bench.bf16={str(bf16).lower()}", "bench.device=cpu",
                                   "fast_path.frozen_vit_bf16=auto"))
    assert result["precision"] == ("bf16 autocast" if bf16 else "fp32")
    assert result["frozen_vit_bf16"] is bf16
    assert torch.get_default_dtype() == torch.float32
