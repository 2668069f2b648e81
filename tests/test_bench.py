"""The benchmark composes with training overrides and reports every section; figures are
checked for shape and sense only (speed targets live in BENCHMARKS.md, not in tests)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import initialize_config_dir
from hydra.utils import instantiate
from torch import nn

from faceparse import cpu_memory
from faceparse.bench import PeakMemory, count_flops, run, run_variants
from faceparse.bench.kernels import INDUCTOR_FUSED, kernel_breakdown, kernel_class
from faceparse.bench.measure import rss_bytes
from faceparse.bench.report import format_comparison, format_profile, format_table
from faceparse.bench.variants import SECTIONS
from faceparse.cli import CONF_DIR

TINY = [
    "cnn.arch=vgg11_bn", "vit.size=small", "decoder.decoder_channels=32",
    "data.image_size=32", "bench.warmup=1", "bench.steps=1", "bench.data.workers=[0]",
    "bench.data.batches=2", "bench.data.write_faces=4", "trainer.accelerator=cpu",
]

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture
def compose_bench(compose, tmp_path: Path):
    return lambda overrides: compose(overrides, config="bench", output_dir=tmp_path)


@pytest.mark.parametrize("compare", sorted(p.stem for p in (CONF_DIR / "compare").glob("*.yaml")))
def test_every_compare_variant_composes_to_valid_speed_options(compose_bench, compare: str
                                                               ) -> None:
    """A typo in a variant would otherwise surface only minutes into a GPU lease."""
    variants = compose_bench([f"compare={compare}"]).bench.compare
    for name, overrides in variants.items():
        cfg = compose_bench(list(overrides))
        instantiate(cfg.fast_path)  # FastPath refuses bad values
        assert set(cfg.bench.sections) <= set(SECTIONS), name


def _profile_gpu_steps() -> dict[str, list[str]]:
    """Each ``bench NAME LIMIT OVERRIDES...`` line of scripts/profile_gpu.sh, as it runs."""
    script = (CONF_DIR.parent / "scripts" / "profile_gpu.sh").read_text().replace("\\\n", " ")
    common = shlex.split(re.search(r'COMMON:-([^}]*)}', script).group(1))
    steps = {}
    for line in script.splitlines():
        if line.startswith("bench "):
            line = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", line)  # ${VAR:-default}: the default
            name, _, *overrides = shlex.split(line)[1:]
            steps[name] = ([] if name.startswith("cpu") else common) + overrides
    return steps


@pytest.mark.parametrize("step", sorted(_profile_gpu_steps()))
def test_every_gpu_lease_step_composes_to_valid_speed_options(compose_bench, step: str
                                                               ) -> None:
    """A GPU lease is minutes long: a step must not fail on a typo in its overrides."""
    cfg = compose_bench(_profile_gpu_steps()[step])
    instantiate(cfg.fast_path)
    assert set(cfg.bench.sections) <= set(SECTIONS)


def test_bench_defaults_are_the_reference_model_at_a_small_size(compose_bench) -> None:
    cfg = compose_bench([])
    assert cfg.cnn.arch == "vgg19_bn" and cfg.vit.size == "large"
    assert cfg.model.net.encoder._target_ == "faceparse.models.DualEncoder"
    assert cfg.vit.random_init  # speed needs no DINOv3 file, and says so
    assert cfg.data.image_size == 128 and cfg.bench.sections == ["data", "train", "infer"]
    assert "FaceSynthetics" in cfg.data.dataset._target_


def test_bench_runs_every_section(compose_bench) -> None:
    results = run(compose_bench(TINY))
    assert results["machine"]["torch"] == torch.__version__
    (data,) = results["data"]
    assert data["workers"] == 0 and data["images_per_s"] > 0
    train, infer = results["train"], results["infer"]
    assert train["precision"] == "32-true" and train["steps"] == 1
    assert not train["frozen_vit_bf16"]  # fp32 training keeps the frozen ViT in fp32
    assert train["images_per_s"] > 0 and train["peak_mib"] > 0
    # the untimed first steps, where torch.compile pays, are reported, not hidden
    assert train["warmup_s"] > 0 and infer["labels"]["warmup_s"] > 0
    assert infer["precision"] == "fp32" and infer["gflops_per_image"] > 0
    assert infer["fold_batchnorm"] and infer["fold_layer_scale"]
    assert not infer["frozen_vit_bf16"]  # fp32 CPU: the ViT stays fp32
    # the ViT-S's 12 attentions rotate q and k together, in training and in inference
    assert train["fused_rope_attentions"] == infer["fused_rope_attentions"] == 12
    assert infer["overlap"] is False  # on a CPU the labels are host tensors already
    # inference on a CPU keeps freed memory for reuse wherever the allocator is glibc's own
    assert infer["reuse_cpu_memory"] == (cpu_memory._why_not() is None)
    assert infer["vs_fp32"]["relative_logit_error"] < 1e-5  # folding is exact up to rounding
    for mode in ("labels", "softmax"):
        assert infer[mode]["images_per_s"] > 0 and infer[mode]["mfu"] is None
    table = format_table(results)
    assert table.count("\ninfer") == 2 and "workers=0" in table
    assert table.count(" warm-up ") == 3  # train, infer labels, infer softmax


def test_profile_times_every_stage_of_the_real_forward(compose_bench) -> None:
    results = run(compose_bench([*TINY, "bench.sections=[profile]", "bench.steps=2"]))
    profile = results["profile"]
    assert profile["replay_max_abs_logit_diff"] == 0.0  # the stages are the net's forward
    # forward + backward, but the frozen ViT has no backward: between 1x and 3x the forward
    assert 3 > profile["train_gflops_per_image"] / profile["forward_gflops_per_image"] > 1.2
    train, infer = profile["train"], profile["infer"]
    names = [row["stage"] for row in train["stages"]]
    assert names[:4] == [f"vgg stage {n} (stride {2 ** (n - 1)})" for n in (1, 2, 3, 4)]
    assert names[4] == "vit (frozen)" and names[-2:] == ["aux heads", "loss"]
    assert [row["stage"] for row in infer["stages"]] == names[:-2]  # no aux heads, no loss
    rows = {row["stage"]: row for row in train["stages"]}
    assert "backward_ms" not in rows["vit (frozen)"]  # frozen: no backward pass
    assert rows["decoder level 2->1"]["backward_ms"] > 0 and rows["loss"]["backward_ms"] > 0
    assert train["optimizer_ms"] > 0 and train["whole_ms"] > 0 and train["mfu"] is None
    for part in (train, infer):
        kernels = part["kernels"]
        assert sum(c["ms"] for c in kernels["classes"].values()) == pytest.approx(
            kernels["kernel_ms_per_step"])
    assert profile["vit_blocks"]["blocks"] == 12
    # inference is timed on the net as predict runs it: BatchNorm folded, none left to run
    assert profile["infer_batchnorms_folded"] > 0
    assert any("batch_norm" in k["kernel"] for k in train["kernels"]["top"])
    assert not any("batch_norm" in k["kernel"] for k in infer["kernels"]["top"])
    for part in (train, infer):  # a CPU has no peak TFLOP/s: the times, but no ceiling
        ceiling = part["ceiling"]
        # kernels from a profiled run, the whole step from an unprofiled one: on a CPU, all
        # matrix work, the two can cross, and then the rest is unknown, never negative
        rest = part["whole_ms"] - ceiling["matrix_ms"]
        assert ceiling["matrix_ms"] > 0
        assert ceiling["rest_ms"] == (pytest.approx(rest) if rest > 0 else None)
        assert ceiling["ceiling_mfu"] is None and ceiling["rest_budget_ms"] is None
    text = format_profile(profile)
    assert "| decoder level 2->1 |" in text and "### infer" in text
    assert text.count("no peak TFLOP/s for this device, so no MFU ceiling") == 2
    assert f"{profile['infer_batchnorms_folded']} BatchNorms folded" in text


def test_profile_without_stages_keeps_the_whole_steps(compose_bench) -> None:
    results = run(compose_bench([*TINY, "bench.sections=[profile]", "bench.steps=1",
                                 "bench.profile.stages=false"]))
    profile = results["profile"]
    assert profile["replay_max_abs_logit_diff"] == 0.0  # the cut is still checked
    for part in (profile["train"], profile["infer"]):
        assert part["stages"] == [] and part["stages_sum_ms"] is None
        assert part["whole_ms"] > 0 and part["kernels"]["kernel_ms_per_step"] > 0
    assert profile["vit_blocks"]["blocks"] == 12
    text = format_profile(profile)
    assert text.count("stages not timed alone (bench.profile.stages=false)") == 2
    assert "| stage |" not in text
    with pytest.raises(ValueError, match="bench.profile.stages='no'"):
        run(compose_bench([*TINY, "bench.sections=[profile]", "bench.profile.stages=no"]))


@pytest.mark.slow
def test_profile_of_a_compiled_net_compiles_every_stage(compose_bench) -> None:
    """What is left after fusion: the steps compiled as training runs them, each stage too."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    results = run(compose_bench([*TINY, "bench.sections=[profile]", "bench.steps=1",
                                 "fast_path.compile=true"]))
    profile = results["profile"]
    assert profile["compiled"] and profile["compile_mode"] == "default"
    assert profile["replay_max_abs_logit_diff"] == 0.0  # the cut is checked eagerly
    # every stage (13 with the aux heads) got graphs of its own, beside the net's 2 parts
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 15
    for part in (profile["train"], profile["infer"]):
        assert INDUCTOR_FUSED in part["kernels"]["classes"]  # compiled kernels are counted
    assert "torch.compile mode default, scope parts" in format_profile(profile)


@pytest.mark.slow
def test_a_compiled_profile_without_stages_compiles_only_the_two_nets(compose_bench) -> None:
    """The lease's profile_compiled step: what is left after fusion without compiling each
    stage (which took the H100 over 282 s on a cold cache)."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    results = run(compose_bench([*TINY, "bench.sections=[profile]", "bench.steps=1",
                                 "fast_path.compile=true", "bench.profile.stages=false"]))
    profile = results["profile"]
    # the training net's and the inference net's 2 parts each (4 graphs on torch 2.14; with
    # each stage compiled too it is 38)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 6
    for part in (profile["train"], profile["infer"]):
        assert part["stages"] == [] and INDUCTOR_FUSED in part["kernels"]["classes"]


def test_profile_refuses_a_net_it_cannot_cut(compose_bench) -> None:
    with pytest.raises(ValueError, match="reference net"):
        run(compose_bench([*TINY, "encoder=cnn", "bench.sections=[profile]"]))


def test_kernels_are_sorted_by_the_work_they_do() -> None:
    assert kernel_class("sm90_xmma_fprop_implicit_gemm_bf16bf16") == "matmul / conv (tensor cores)"
    assert kernel_class("cudnn_generated_fort_native_sdpa_sm90_flash_fprop") == (
        "attention (flash / SDPA)")
    assert kernel_class("batch_norm_collect_statistics_channels_last_kernel") == (
        "batch / layer norm")
    assert kernel_class("upsample_bilinear2d_nhwc_out_frame") == "resize (upsample)"
    assert kernel_class("cudnn::bn_fw_tr_1C11_kernel_NCHW") == "batch / layer norm"
    assert kernel_class("conv_depthwise2d_forward_kernel") == "depthwise conv (CUDA cores)"
    # adds and multiplies are elementwise work, though their template is named "nocast"
    assert kernel_class("void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_"
                        "impl_nocast<at::native::CUDAFunctor_add<c10::BFloat16") == (
        "elementwise / reduce")
    assert kernel_class("void at::native::vectorized_elementwise_kernel<8, at::native::"
                        "bfloat16_copy_kernel_cuda") == "copy / cast / layout"
    assert kernel_class("CatArrayBatchedCopy<OpaqueType<2u>") == "copy / cast / layout"
    # cuDNN's layout and scale helpers move memory; Blackwell's cuBLAS kernels are matmuls
    for helper in ("void cudnn::ops::nchwToNhwcKernel<__nv_bfloat16, __nv_bfloat16, float>",
                   "void cudnn::ops::nhwcToNchwKernel<float, float, float, true>",
                   "void cudnn::ops::scalePackedTensor_kernel<float, float>"):
        assert kernel_class(helper) == "copy / cast / layout", helper
    assert kernel_class("nvjet_sm100_tst_256x128_64x4_1x2_h_bz_coopA_bias_TNT") == (
        "matmul / conv (tensor cores)")


def test_the_cpu_profile_counts_predicts_fused_convolutions() -> None:
    """Predict runs conv + ReLU as one ``mkldnn::`` op on a CPU: its time is convolution
    work in the table, not lost to "everything else"."""
    from faceparse.fast_path import FastPath
    from faceparse.inference.batch import prepare_for_inference

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
    net = prepare_for_inference(net, "cpu", FastPath(fuse_conv_relu=True))
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        table = kernel_breakdown(lambda: net(x), torch.device("cpu"), steps=2)
    names = [row["kernel"] for row in table["top"]]
    fused = [n for n in names if n.startswith("mkldnn::")]
    assert fused, names
    assert all(kernel_class(n) == "matmul / conv (tensor cores)" for n in fused)


def test_compiled_kernels_are_sorted_by_what_inductor_made_them_do() -> None:
    """A fused kernel names the ops it fuses: a conv's bias + ReLU is not tensor-core work."""
    assert kernel_class("triton_poi_fused_convolution_relu_3") == INDUCTOR_FUSED
    assert kernel_class("triton_red_fused__native_batch_norm_legit_functional_7") == (
        INDUCTOR_FUSED)
    assert kernel_class("triton_per_fused_add_native_layer_norm_12") == INDUCTOR_FUSED
    assert kernel_class("triton_tem_fused_addmm_gelu_2") == "matmul / conv (tensor cores)"
    assert kernel_class("## Call CompiledFxGraph fp27ubui5sjjk3kkt7sap ##") == INDUCTOR_FUSED


def test_unknown_section_is_refused(compose_bench) -> None:
    with pytest.raises(ValueError, match="unknown bench sections"):
        run(compose_bench([*TINY, "bench.sections=[trian]"]))


def test_variants_rerun_with_their_overrides_and_survive_failures(compose_bench,
                                                                   tmp_path: Path) -> None:
    overrides = [*TINY, f"paths.output_dir={tmp_path}", "bench.sections=[infer]"]
    results = run(compose_bench(overrides))
    seen = []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        variants = run_variants(
            [*overrides, "compare=fast_path", "~bench.compare.compiled"],
            {"explicit_attention": ["vit.fused_attn=false", "bench.bf16=false"],
             "broken": ["bench.sections=[trian]"]},
            on_result=lambda name, result: seen.append(name),
        )
    assert seen == ["explicit_attention", "broken"]
    explicit = variants["explicit_attention"]
    assert explicit["net"]["encoder"]["vit"]["fused_attn"] is False
    assert set(explicit) == {"machine", "command", "net", "infer"}  # the command's sections
    assert "compare" not in explicit  # the command's compare=... is not run again
    assert explicit["command"].endswith("vit.fused_attn=false bench.bf16=false")
    assert "unknown bench sections" in variants["broken"]["error"]
    results["compare"] = variants
    table = format_comparison(results).splitlines()
    assert [row.split()[:3] for row in table[1:4]] == [
        ["baseline", "infer", "labels"], ["baseline", "infer", "softmax"],
        ["explicit_attention", "infer", "labels"]]
    assert table[-2].split()[:2] == ["broken", "failed"]
    assert table[-1].startswith(f"measured on: {results['machine']['cpu']} (flags: ")


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
        during = rss_bytes()
        # yield to the sampler until it has seen the block (a busy machine may delay it
        # past any fixed sleep; a sampler that never samples fails after 10 s)
        deadline = time.monotonic() + 10
        while memory.peak < during and time.monotonic() < deadline:
            time.sleep(0.005)
        del block
    assert memory.method == "cpu rss sampled" and memory.peak >= during


@pytest.mark.slow
def test_bench_command_prints_and_writes_its_figures(tmp_path: Path) -> None:
    """``python -m faceparse.bench`` as a user runs it: the table, and bench.json."""
    result = subprocess.run(
        [sys.executable, "-m", "faceparse.bench", *TINY, "bench.sections=[train,infer]",
         f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "bench.json").read_text())
    assert set(results) == {"machine", "command", "net", "train", "infer"}
    assert results["command"].startswith("python -m faceparse.bench cnn.arch=vgg11_bn")
    assert results["train"]["images_per_s"] > 0
    assert "infer labels" in result.stdout and "images/s" in result.stdout
