"""The census counts what a CUDA bf16 step would run, on a machine without a GPU: its
emulation of CUDA autocast, its own walk of the backward, and the dtypes the net keeps there."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from faceparse.bench.census import (
    CAST,
    OpCensus,
    _backward,
    census_step,
    emulated_cuda,
    fuse_conv_relu_as_on_a_gpu,
    op_class,
    summarise,
)
from faceparse.bench.report import format_census
from faceparse.inference.fold import fold_batchnorm
from faceparse.models.dinov3 import frozen_vits_to_bf16

pytestmark = pytest.mark.usefixtures("torch_single_thread")
TINY = ["cnn.arch=vgg11_bn", "vit.size=small", "decoder.decoder_channels=32"]


def test_emulated_cuda_autocast_makes_the_gpu_dtype_choices() -> None:
    """CUDA's lists, not the CPU's: upsampling and LayerNorm in fp32, cat widened to fp32."""
    with emulated_cuda(torch.bfloat16):
        x = torch.empty(2, 4, 8, 8, device="cuda", dtype=torch.bfloat16)
        assert x.device.type == "cuda"
        up = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
        assert up.dtype == torch.float32
        assert torch.cat([up, up.to(torch.bfloat16)], 1).dtype == torch.float32
        tokens = torch.empty(2, 5, 4, device="cuda", dtype=torch.bfloat16)
        assert F.layer_norm(tokens, (4,)).dtype == torch.float32
        weight = torch.empty(3, 4, 1, 1, device="cuda")
        assert F.conv2d(x.float(), weight).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cuda")  # switched back off after
    with torch.autocast("cpu", torch.bfloat16):  # the CPU keeps upsampling in bf16
        assert F.interpolate(torch.ones(1, 1, 2, 2, dtype=torch.bfloat16), size=(4, 4),
                             mode="bilinear").dtype == torch.bfloat16


class Doubler(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad * 2


class Branchy(nn.Module):
    """Shared weights, a map used twice, cat and split, resizing, a Python Function."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.frozen = nn.Conv2d(8, 8, 1)
        self.frozen.requires_grad_(False)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv(x)
        b = self.conv(F.avg_pool2d(x, 2))  # the same weights twice
        b = F.interpolate(b, size=a.shape[-2:], mode="bilinear", align_corners=False)
        y = torch.relu(self.bn(torch.cat([a, Doubler.apply(b)], 1)))
        left, right = y.split(4, dim=1)
        return self.head(self.frozen(torch.cat([right, left], 1))) + a.mean()


def test_the_backward_walk_gives_the_engines_gradients() -> None:
    torch.manual_seed(0)
    net = Branchy()
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    net(x).square().mean().backward()
    expected = [p.grad.clone() for p in net.parameters() if p.requires_grad] + [x.grad.clone()]
    net.zero_grad(set_to_none=True)
    x.grad = None
    loss = net(x).square().mean()
    _backward(loss.grad_fn, torch.ones(()), OpCensus(), {})
    got = [p.grad for p in net.parameters() if p.requires_grad] + [x.grad]
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-7)
    assert net.frozen.weight.grad is None


def test_ops_are_classed_by_their_work_and_casts_by_dtype() -> None:
    bf16, fp32 = {torch.bfloat16}, {torch.float32}
    assert op_class("_to_copy", bf16, fp32) == CAST
    assert op_class("_to_copy", fp32, fp32) == "copy / layout"  # a layout change
    assert op_class("cat", bf16, bf16) == "copy / layout"
    assert op_class("upsample_bilinear2d_backward", fp32, fp32) == "resize (upsample)"
    assert op_class("native_layer_norm", bf16, bf16) == "batch / layer norm"
    assert op_class("convolution_backward", bf16, bf16) == "matmul / conv"
    assert op_class("relu_", bf16, bf16) == "elementwise / reduce"


def test_an_out_tensor_and_a_copy_destination_are_counted_as_written_only() -> None:
    a, b = torch.ones(4, 8), torch.ones(4, 8)
    out = torch.empty(4, 8, dtype=torch.bfloat16)
    census = OpCensus()
    with census:
        torch.add(a, b, out=out)  # reads a and b, writes out
        out.copy_(a)  # reads a, writes out
        a.mul_(b)  # in place: reads a and b, writes a
    bytes_by_op = {key[3]: row[0] for key, row in census.rows.items()}
    assert bytes_by_op == {"add": 32 * 4 * 2 + 32 * 2, "copy_": 32 * 4 + 32 * 2,
                           "mul_": 32 * 4 * 3}


@pytest.fixture
def quickstart_net(compose) -> tuple[nn.Module, nn.Module, int]:
    module = instantiate(compose([*TINY, "vit.random_init=true"]).model)
    return module.net, module.criterion, module.scheme.num_classes


def test_a_training_step_as_a_gpu_runs_it(quickstart_net) -> None:
    net, criterion, classes = quickstart_net
    net = copy.deepcopy(net).train()
    assert frozen_vits_to_bf16(net) == 1
    net.to(memory_format=torch.channels_last)
    trainable = {name: p.shape for name, p in net.named_parameters() if p.requires_grad}
    rows = census_step(net, criterion, batch=2, size=64, num_classes=classes)

    def where(**match: str) -> list[dict]:
        return [r for r in rows
                if all(r[k.rstrip("_")].startswith(v) for k, v in match.items())]

    # the backward ran through every trained stage, and never into the frozen ViT
    assert where(phase="backward", stage="decoder.ctf_2_1")
    assert where(phase="backward", stage="encoder.cnn")
    assert not where(phase="backward", stage="encoder.vit")
    grads = {name: p.grad for name, p in net.named_parameters() if p.requires_grad}
    assert {name: g.shape for name, g in grads.items() if g is not None} == trainable
    # fused attention in bf16, as a GPU runs it, not the fp32 math path fake tensors fall to
    (attention,) = where(stage="encoder.vit", op="fused attention")
    assert attention["dtype"] == "bfloat16" and attention["calls"] == 12
    # laid out (B, tokens, heads, width) as flash and cuDNN give it, so timm's transpose
    # and reshape after it is a view: no copy of the attention's output per block (what
    # copies remain are the patch tokens' and the RoPE tables', once per batch)
    assert sum(r["calls"] for r in where(stage="encoder.vit", op="clone")) < 12
    # what this net keeps in bf16 under CUDA autocast: the decoder levels' upsampling and
    # the concatenation after it, and the frozen ViT's LayerNorms (autocast's fp32 list);
    # the aux heads' logits are upsampled in fp32, which the loss wants them in
    resizes = where(stage="decoder.ctf", class_="resize")
    assert resizes and all(r["dtype"] == "bfloat16" for r in resizes)
    assert {r["dtype"] for r in where(stage="decoder", class_="resize")} == {"bfloat16", "float32"}
    assert not [r for r in where(stage="decoder.ctf", op="cat") if r["dtype"] != "bfloat16"]
    for name in ("ctf_16_8", "ctf_8_4", "ctf_4_2", "ctf_2_1"):  # each casts its weights only
        (casts,) = where(phase="forward", stage=f"decoder.{name}", class_=CAST)
        convs = [m for m in net.decoder.get_submodule(name).modules()
                 if isinstance(m, nn.Conv2d)]
        weights = sum(p.numel() for m in convs for p in m.parameters())
        assert casts["bytes"] == weights * (4 + 2), casts
    norms = where(phase="forward", stage="encoder.vit", op="native_layer_norm")
    assert norms and all(r["dtype"] == "bfloat16,float32" for r in norms)  # + fp32 stats
    summary = summarise(rows)
    assert summary["total_gb"] == pytest.approx(sum(r["bytes"] for r in rows) / 1e9)
    assert set(summary["classes"]["matmul / conv"]) == {"forward", "backward"}


@pytest.mark.slow  # a whole command, end to end: in CI's slow suite
def test_the_census_command_writes_its_tables(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "faceparse.bench", *TINY, "bench.sections=[census]",
         "data.image_size=64", "data.batch_size=2", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    census = json.loads((tmp_path / "bench.json").read_text())["census"]
    assert census["frozen_vit_bf16"] == {"train": True, "infer": True}
    assert census["train"]["total_gb"] > census["infer"]["total_gb"] > 0
    assert "### train" in result.stdout and "| decoder.ctf_2_1 |" in result.stdout
    assert format_census(census) in result.stdout


def test_cudnns_fused_convolution_and_relu_drops_the_relu_passes(quickstart_net) -> None:
    """``fast_path.fuse_conv_relu=true`` as a GPU would run it: each fused convolution
    moves what the plain one did, and its ReLU's read and write are gone."""
    net, _, classes = quickstart_net
    net = copy.deepcopy(net).eval()
    fold_batchnorm(net)
    net.to(memory_format=torch.channels_last)
    fused = copy.deepcopy(net)
    pairs = fuse_conv_relu_as_on_a_gpu(fused)
    assert pairs > 20
    plain_rows = census_step(net, None, batch=2, size=64, num_classes=classes)
    fused_rows = census_step(fused, None, batch=2, size=64, num_classes=classes)

    def total(rows: list[dict], op: str) -> tuple[int, int]:
        chosen = [r for r in rows if r["op"] == op]
        return sum(r["bytes"] for r in chosen), sum(r["calls"] for r in chosen)

    relu_bytes, relus = total(plain_rows, "relu_")
    assert relus == pairs and total(fused_rows, "relu_") == (0, 0)
    conv_bytes, convs = total(plain_rows, "convolution")
    fused_conv_bytes, fused_convs = total(fused_rows, "cudnn_convolution_relu")
    assert fused_convs == pairs
    assert fused_conv_bytes + total(fused_rows, "convolution")[0] == conv_bytes
    assert (sum(r["bytes"] for r in plain_rows) - sum(r["bytes"] for r in fused_rows)
            == relu_bytes)


def test_frozen_vgg_batchnorm_leaves_no_batchnorm_pass_in_the_cnn(compose, quickstart_net) -> None:
    """``cnn.freeze_norm=true``: the training step's CNN runs no BatchNorm, forward or
    backward. Scaling the weights each step moves a few times the weights' bytes, so at
    a real map size (fake tensors: any size is free) what the CNN moves shrinks by nearly
    the BatchNorm passes."""
    net, criterion, classes = quickstart_net
    frozen = instantiate(compose([*TINY, "vit.random_init=true", "cnn.freeze_norm=true"])
                         .model.net)
    frozen.load_state_dict(net.state_dict())

    def cnn_rows(model: nn.Module) -> list[dict]:
        model = copy.deepcopy(model).train()
        rows = census_step(model, criterion, batch=8, size=256, num_classes=classes)
        return [r for r in rows if r["stage"].startswith("encoder.cnn")]

    live, fixed = cnn_rows(net), cnn_rows(frozen)
    live_norms = [r for r in live if r["class"] == "batch / layer norm"]
    assert {r["phase"] for r in live_norms} == {"forward", "backward"}
    assert sum(r["calls"] for r in live_norms if r["phase"] == "forward") == 6
    assert not [r for r in fixed if r["class"] == "batch / layer norm"]
    # the convolutions' own traffic is the same
    convs = [sum(r["bytes"] for r in rows if r["op"] == "convolution") for rows in (live, fixed)]
    assert convs[0] == convs[1]
    assert (sum(r["bytes"] for r in live) - sum(r["bytes"] for r in fixed)
            > 0.8 * sum(r["bytes"] for r in live_norms))  # 0.90 at this size


def test_relus_backward_is_counted_not_taken_for_a_view() -> None:
    """``threshold_backward`` (ReLU's backward) reads the gradient and the output and writes
    a gradient: three maps. A prefix match of the view op ``t`` used to drop it."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    loss = net(torch.randn(2, 3, 8, 8)).square().mean()
    census = OpCensus()
    with census:
        _backward(loss.grad_fn, torch.ones(()), census, {})
    bytes_by_op = {key[3]: row[0] for key, row in census.rows.items()}
    assert bytes_by_op.get("threshold_backward") == 3 * 2 * 4 * 8 * 8 * 4
