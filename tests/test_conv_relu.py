"""Convolution and ReLU in one oneDNN call on a CPU: same values, same parameters, the plain
path wherever the fused call must not run (gradients, tracers, other dtypes)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import faceparse.inference.conv_relu as conv_relu
from faceparse.fast_path import FastPath
from faceparse.inference import prepare_for_inference
from faceparse.inference.conv_relu import ConvReLU, fuse_conv_relu, fused_conv_relu_dtypes
from faceparse.inference.fold import fold_batchnorm

ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn,
                                                           "_convolution_pointwise")
pytestmark = [pytest.mark.usefixtures("torch_single_thread"),
              pytest.mark.skipif(not ONEDNN, reason="this PyTorch has no oneDNN fused conv")]


def test_the_probe_passes_where_onednn_is_there() -> None:
    dtypes, problems = fused_conv_relu_dtypes()
    assert torch.float32 in dtypes  # oneDNN convolves fp32 on every x86 CPU
    assert len(problems) == 2 - len(dtypes)  # each dtype left out says why


@pytest.fixture
def net(trained_looking_net) -> nn.Module:
    return trained_looking_net


def _count(net: nn.Module, kind: type) -> int:
    return sum(type(m) is kind for m in net.modules())


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("bf16", [False, True])
def test_the_fused_net_gives_the_plain_nets_logits(net, layout, bf16) -> None:
    plain = copy.deepcopy(net)
    fold_batchnorm(plain)
    fused = copy.deepcopy(plain)
    relus = _count(plain, nn.ReLU)
    assert fuse_conv_relu(fused) == relus > 20  # VGG, decoder levels, fusion projections
    assert _count(fused, nn.ReLU) == 0 and _count(fused, ConvReLU) == relus
    for n in (plain, fused):
        n.to(memory_format=layout)
    x = torch.randn(2, 3, 32, 32).to(memory_format=layout)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        expected, got = plain(x), fused(x)
    assert got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_parameters_and_keys_are_the_convolutions_own(net) -> None:
    fold_batchnorm(net)
    conv = net.encoder.cnn.layers[0]
    keys = set(net.state_dict())
    fuse_conv_relu(net)
    fused = net.encoder.cnn.layers[0]
    assert isinstance(fused, ConvReLU) and fused.weight is conv.weight and fused.bias is conv.bias
    assert set(net.state_dict()) == keys
    assert fuse_conv_relu(net) == 0  # done once


def test_an_unfolded_batchnorm_keeps_its_convolution_and_relu_apart(net) -> None:
    assert fuse_conv_relu(net) == 0
    assert _count(net, ConvReLU) == 0


def test_the_plain_path_runs_where_the_fused_call_must_not(monkeypatch) -> None:
    conv = ConvReLU.like(nn.Conv2d(4, 6, 3, padding=1))
    x = torch.randn(1, 4, 8, 8)
    calls = []
    real = conv_relu._fused
    monkeypatch.setattr(conv_relu, "_fused", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        conv(x)
    assert calls == [1]  # the fused call runs where it may
    calls.clear()
    out = conv(x.requires_grad_())  # a gradient is wanted: autograd needs the plain ops
    out.sum().backward()
    assert x.grad is not None and calls == []
    with torch.no_grad():
        conv.double()(x.detach().double())  # oneDNN's fused call is fp32 and bf16 only
    assert calls == []
    with torch.no_grad(), torch.autocast("cpu", torch.float16):
        conv.float()(x.detach())
    assert calls == []
    monkeypatch.setattr(conv_relu, "traced", lambda: True)
    with torch.no_grad():
        torch.testing.assert_close(conv(x.detach()), F.relu(F.conv2d(
            x.detach(), conv.weight, conv.bias, padding=1)))
    assert calls == []


def test_a_failing_probe_leaves_the_net_alone(net, monkeypatch, caplog) -> None:
    fold_batchnorm(net)
    monkeypatch.setattr(conv_relu, "fused_conv_relu_dtypes",
                        lambda device_type: (frozenset(), ("no oneDNN here",)))
    with caplog.at_level("INFO", logger="faceparse.inference.conv_relu"):
        assert fuse_conv_relu(net) == 0
    assert _count(net, ConvReLU) == 0 and "no oneDNN here" in caplog.text


def test_a_dtype_that_fails_its_probe_runs_the_plain_ops(monkeypatch, caplog) -> None:
    """An AVX2-only CPU: oneDNN has no bf16 convolution there, fp32 is still fused."""
    monkeypatch.setattr(conv_relu, "fused_conv_relu_dtypes",
                        lambda device_type: (frozenset({torch.float32}),
                                             ("no bf16 convolution",)))
    net = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
    with caplog.at_level("INFO", logger="faceparse.inference.conv_relu"):
        assert fuse_conv_relu(net) == 1
    assert "on cpu except in float32: no bf16 convolution" in caplog.text
    calls = []
    real = conv_relu._fused
    monkeypatch.setattr(conv_relu, "_fused", lambda *a: calls.append(a[2]) or real(*a))
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        net(x)
        with torch.autocast("cpu", torch.bfloat16):
            plain_bf16 = net(x)
    assert calls == [torch.float32] and plain_bf16.dtype == torch.bfloat16


def test_prepare_for_inference_fuses_on_a_cpu_unless_told_not_to(net) -> None:
    kept = prepare_for_inference(copy.deepcopy(net), "cpu", FastPath(fuse_conv_relu=False))
    assert _count(kept, ConvReLU) == 0 and _count(kept, nn.ReLU) > 20
    fused = prepare_for_inference(copy.deepcopy(net), "cpu", FastPath())
    assert _count(fused, ConvReLU) > 20 and _count(fused, nn.ReLU) == 0
    x = torch.randn(1, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), kept(x), atol=1e-5, rtol=1e-5)


def test_fusion_on_cuda_is_asked_for_and_probed_apart_from_the_cpus() -> None:
    """``auto`` fuses on a CPU only (measured there); ``true`` adds CUDA (cuDNN's call)."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert FastPath().wants_conv_relu_fused(cpu) and not FastPath().wants_conv_relu_fused(cuda)
    forced = FastPath(fuse_conv_relu=True)
    assert forced.wants_conv_relu_fused(cpu) and forced.wants_conv_relu_fused(cuda)
    assert not forced.wants_conv_relu_fused(torch.device("meta"))
    off = FastPath(fuse_conv_relu=False)
    assert not off.wants_conv_relu_fused(cpu) and not off.wants_conv_relu_fused(cuda)
    with pytest.raises(ValueError, match="fast_path.fuse_conv_relu=cuda: use auto, true"):
        FastPath(fuse_conv_relu="cuda")
    if not torch.cuda.is_available():
        dtypes, problems = fused_conv_relu_dtypes("cuda")
        assert dtypes == frozenset() and problems == ("no CUDA device",)
    assert fused_conv_relu_dtypes("mps") == (frozenset(), (
        "no fused convolution + ReLU for mps devices",))


def test_a_net_fused_for_cuda_runs_the_plain_ops_on_a_cpu(net, monkeypatch, caplog) -> None:
    """The rewrite names its device type: a CUDA net moved to the CPU stays correct."""
    fold_batchnorm(net)
    plain = copy.deepcopy(net)
    monkeypatch.setattr(conv_relu, "fused_conv_relu_dtypes",
                        lambda device_type: (frozenset({torch.bfloat16}), ()))
    assert fuse_conv_relu(net, "cuda") > 20
    assert {m.fused_on for m in net.modules() if isinstance(m, ConvReLU)} == {"cuda"}
    calls = []
    monkeypatch.setattr(conv_relu, "_fused", lambda *a: calls.append(a) or None)
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(net(x), plain(x))
    assert calls == []


def test_a_failing_cuda_probe_says_which_library_failed(monkeypatch) -> None:
    """Where cuDNN's call raises or disagrees, the probe names it and the dtype."""
    def broken(x, weight, bias, conv):
        raise RuntimeError("CUDNN_STATUS_NOT_SUPPORTED")

    backend = conv_relu._BACKENDS["cpu"]
    monkeypatch.setitem(conv_relu._BACKENDS, "cpu", conv_relu._Backend(
        "cuDNN", broken, backend.dtypes, backend.missing, backend.enabled,
        backend.fp32_tolerance))
    problem = conv_relu._probe("cpu", torch.float32)
    assert problem.startswith("cuDNN's fused convolution + ReLU failed its torch.float32 probe")
    assert "CUDNN_STATUS_NOT_SUPPORTED" in problem

    def wrong(x, weight, bias, conv):  # a ReLU left out
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)

    monkeypatch.setitem(conv_relu._BACKENDS, "cpu", conv_relu._Backend(
        "cuDNN", wrong, backend.dtypes, backend.missing, backend.enabled,
        backend.fp32_tolerance))
    assert "failed its torch.bfloat16 probe" in conv_relu._probe("cpu", torch.bfloat16)


@pytest.mark.parametrize(("stride", "padding", "dilation", "groups"),
                         [(1, 1, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1), (2, 0, 1, 4)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_the_cudnn_meta_kernel_gives_the_convolutions_shape_and_layout(
        stride, padding, dilation, groups, layout) -> None:
    """What tracers and fake tensors see of cuDNN's fused call: a real convolution's shape,
    and NHWC strides where the input is NHWC (inductor checks them at run time)."""
    x = torch.randn(2, 8, 15, 13).to(memory_format=layout)
    weight = torch.randn(12, 8 // groups, 3, 3).to(memory_format=layout)
    bias = torch.randn(12)
    real = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    meta = conv_relu._conv_output_meta(x.to("meta"), weight.to("meta"), bias.to("meta"),
                                       [stride] * 2, [padding] * 2, [dilation] * 2, groups)
    assert meta.shape == real.shape and meta.device.type == "meta"
    assert meta.stride() == real.stride()
    assert conv_relu.register_cudnn_conv_relu_meta()
    assert torch._C._dispatch_has_kernel_for_dispatch_key("aten::cudnn_convolution_relu", "Meta")


def test_under_compile_cuda_keeps_the_fused_call_and_exporters_get_the_plain_ops(
        monkeypatch) -> None:
    """inductor has no fused convolution on CUDA, so a compiled graph calls cuDNN's; an
    exporter needs standard ops; on a CPU inductor fuses the plain ops into oneDNN's."""
    from faceparse.bench.census import OpCensus, emulated_cuda, to_fake_cuda

    assert conv_relu.register_cudnn_conv_relu_meta()
    cuda = ConvReLU.like(nn.Conv2d(4, 6, 3, padding=1), "cuda", frozenset({torch.bfloat16}))
    cpu = ConvReLU.like(nn.Conv2d(4, 6, 3, padding=1), "cpu", frozenset({torch.float32}))

    def ops(conv: ConvReLU, device: str, compiling: bool, exporting: bool) -> set[str]:
        monkeypatch.setattr(conv_relu, "traced", lambda: compiling or exporting)
        monkeypatch.setattr(conv_relu, "exported", lambda: exporting)
        census = OpCensus()
        conv = copy.deepcopy(conv)
        with emulated_cuda(torch.bfloat16), torch.no_grad():
            if device == "cuda":
                to_fake_cuda(conv)
            x = torch.empty(2, 4, 8, 8, device=device)
            with census:
                conv(x)
        return {row[3] for row in census.rows}

    assert "cudnn_convolution_relu" in ops(cuda, "cuda", compiling=True, exporting=False)
    assert {"convolution", "relu"} <= ops(cuda, "cuda", compiling=True, exporting=True)
    assert "cudnn_convolution_relu" not in ops(cuda, "cuda", compiling=True, exporting=True)
    assert "cudnn_convolution_relu" in ops(cuda, "cuda", compiling=False, exporting=False)
    assert "_convolution_pointwise" in ops(cpu, "cpu", compiling=False, exporting=False)
    assert "_convolution_pointwise" not in ops(cpu, "cpu", compiling=True, exporting=False)


def test_the_fused_path_traces_into_one_graph_where_compile_keeps_it(monkeypatch) -> None:
    """The CUDA path's code (backend lookup, the library's switch, the call) compiles with
    no graph break; shown on a CPU whose oneDNN call stands in for cuDNN's."""
    monkeypatch.setattr(conv_relu, "_compiles_fused", lambda device_type: True)
    conv = ConvReLU.like(nn.Conv2d(4, 6, 3, padding=1), "cpu", frozenset({torch.float32}))
    calls = []
    real = conv_relu._BACKENDS["cpu"]
    monkeypatch.setitem(conv_relu._BACKENDS, "cpu", conv_relu._Backend(
        real.library, lambda *a: calls.append(1) or real.call(*a), real.dtypes, real.missing,
        real.enabled, real.fp32_tolerance))
    x = torch.randn(2, 4, 8, 8)
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(conv, backend="eager", fullgraph=True)(x)
        torch.testing.assert_close(compiled, F.relu(F.conv2d(x, conv.weight, conv.bias,
                                                             padding=1)))
    assert calls  # traced through the fused call, not the plain ops
    torch._dynamo.reset()
