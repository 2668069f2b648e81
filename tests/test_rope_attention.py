"""The DINOv3 attention that rotates q and k together gives timm's bits with fewer passes,
and hands every case it was not written for back to timm's forward."""

from __future__ import annotations

import copy
from unittest import mock

import pytest
import torch
from timm.layers.pos_embed_sincos import apply_rot_embed_cat
from timm.models.eva import EvaAttention

from faceparse.bench.census import OpCensus, emulated_cuda, to_fake_cuda
from faceparse.bench.standins import fused_attention
from faceparse.fast_path import FastPath
from faceparse.models import rope_attention
from faceparse.models.dinov3 import DinoVitEncoder, frozen_vits_to_bf16
from faceparse.models.rope_attention import FusedRopeAttention, _fusable, fuse_rope, rotate_qk

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def vit() -> DinoVitEncoder:
    """A ViT-S/16 with weights far enough from zero that every bias and rotation counts."""
    torch.manual_seed(0)
    encoder = DinoVitEncoder(size="small", random_init=True)
    with torch.no_grad():
        for param in encoder.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return encoder


def fused_copy(net: torch.nn.Module) -> torch.nn.Module:
    net = copy.deepcopy(net)
    assert fuse_rope(net) == 12
    return net


def timm_rotation(q: torch.Tensor, rope: torch.Tensor, prefix: int) -> torch.Tensor:
    """timm's EVA attention on one of q and k (its ``forward``, written out)."""
    rotated = apply_rot_embed_cat(q[:, :, prefix:], rope, half=True)
    return torch.cat([q[:, :, :prefix], rotated], dim=2).type_as(q)


@pytest.mark.parametrize("upcast", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotation_gives_timms_bits(upcast: bool, dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    batch, heads, prefix, patches, dim = 2, 3, 5, 12, 8
    qkv = (torch.randn(batch, prefix + patches, 3, heads, dim) * 4).to(dtype)
    qkv = qkv.permute(2, 0, 3, 1, 4)  # as attention slices it: (3, B, heads, N, D), strided
    rope = torch.randn(patches, 2 * dim)  # fp32 [sin | cos], as timm's DINOv3 makes it
    tables = rope_attention.RopeTables().factors(rope)
    out = rotate_qk(qkv[:2], tables, prefix, dtype, upcast=upcast)
    assert out.dtype == dtype and out.shape == qkv[:2].shape
    for fused, plain in zip(out, qkv[:2], strict=True):
        assert torch.equal(fused, timm_rotation(plain, rope, prefix))
    assert torch.equal(out[:, :, :, :prefix], qkv[:2, :, :, :prefix])  # class, registers


def test_the_tables_are_built_once_per_rope_tensor_and_rebuilt_when_it_changes() -> None:
    tables = rope_attention.RopeTables()
    rope = torch.randn(6, 8)
    first = tables.factors(rope)
    assert tables.factors(rope) is first  # the next blocks of the same forward
    assert torch.equal(first[0], rope[:, 4:]) and torch.equal(first[1], -rope[:, :2])
    rope.mul_(2)  # changed in place: its version counter moved
    assert torch.equal(tables.factors(rope)[0], rope[:, 4:])
    other = rope.clone() + 1  # another input size's tensor, or the next forward's
    assert torch.equal(tables.factors(other)[2], other[:, 2:4])


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16 stored, autocast"])
@pytest.mark.parametrize("size", [(64, 64), (80, 48)])
def test_the_vit_maps_are_bit_identical_and_take_the_fast_path(vit, bf16: bool,
                                                              size: tuple[int, int]) -> None:
    plain = copy.deepcopy(vit).eval()
    if bf16:
        frozen_vits_to_bf16(plain)
    fused = fused_copy(plain)
    image = torch.randn(2, 3, *size)
    with mock.patch.object(rope_attention, "rotate_qk", wraps=rotate_qk) as spy:
        for mode in (torch.inference_mode, torch.no_grad):
            with mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                assert torch.equal(fused(image)[0], plain(image)[0])
    assert spy.call_count == 2 * 12  # every block, both modes


def test_parameters_and_state_dict_are_the_same_objects(vit) -> None:
    fused = copy.deepcopy(vit)
    before = {name: param for name, param in fused.named_parameters()}
    keys = list(fused.state_dict())
    assert fuse_rope(fused) == 12
    assert fuse_rope(fused) == 0  # idempotent
    blocks = fused.model.blocks
    assert all(type(block.attn) is FusedRopeAttention for block in blocks)
    assert len({id(block.attn.rope_tables) for block in blocks}) == 1  # one ViT, one table
    assert list(fused.state_dict()) == keys
    assert all(param is before[name] for name, param in fused.named_parameters())
    fused.load_state_dict(vit.state_dict())  # a checkpoint loads as into timm's module


def test_a_vit_that_needs_gradients_takes_timms_forward(vit) -> None:
    """Fine-tuned blocks train through timm's code: out= products have no autograd."""
    plain = copy.deepcopy(vit).train()
    plain.model.requires_grad_(True)
    fused = fused_copy(plain)
    image = torch.randn(1, 3, 48, 48)
    with mock.patch.object(rope_attention, "rotate_qk", wraps=rotate_qk) as spy:
        fused.model.forward_features(image).sum().backward()
    assert spy.call_count == 0
    plain.model.forward_features(image).sum().backward()
    for (name, a), b in zip(fused.named_parameters(), plain.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad), name


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning")
@pytest.mark.parametrize("trace", ["compile", "export", "jit.trace", "explicit attention"])
def test_traced_or_explicit_attention_takes_timms_forward(vit, trace: str) -> None:
    """Inductor fuses timm's rotation itself; exporters and debugging want timm's ops."""
    fused = fused_copy(vit).eval()
    image = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        expected = vit(image)[0]
        with mock.patch.object(rope_attention, "rotate_qk", wraps=rotate_qk) as spy:
            if trace == "compile":
                torch._dynamo.reset()
                out = torch.compile(fused, backend="eager", fullgraph=True)(image)[0]
            elif trace == "export":
                out = torch.export.export(fused, (image,)).module()(image)[0]
            elif trace == "jit.trace":
                out = torch.jit.trace(lambda x: fused(x)[0], image, check_trace=False)(image)
            else:
                for block in fused.model.blocks:
                    block.attn.fused_attn = False
                out = fused(image)[0]
    assert spy.call_count == 0
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_only_dinov3_style_attention_is_swapped() -> None:
    interleaved = EvaAttention(32, num_heads=2, rotate_half=False, scale_norm=False)
    gated = EvaAttention(32, num_heads=2, rotate_half=True, gated=True, scale_norm=False)
    assert _fusable(EvaAttention(32, num_heads=2, rotate_half=True, scale_norm=False))
    holder = torch.nn.Module()
    holder.blocks = torch.nn.ModuleList(torch.nn.Module() for _ in range(2))
    holder.blocks[0].attn, holder.blocks[1].attn = interleaved, gated
    assert fuse_rope(holder) == 0


def test_the_fast_path_option_switches_it(vit) -> None:
    on = FastPath(channels_last=False).apply(copy.deepcopy(vit), "cpu")
    off = FastPath(channels_last=False, fused_rope=False).apply(copy.deepcopy(vit), "cpu")
    assert type(on.model.blocks[0].attn) is FusedRopeAttention
    assert type(off.model.blocks[0].attn) is EvaAttention
    with pytest.raises(ValueError, match="fast_path.fused_rope"):
        FastPath(fused_rope="yes")


def test_on_a_gpu_it_rotates_in_bf16_without_casts_or_concatenations(vit) -> None:
    """Emulated CUDA (fake tensors): what each block runs, against timm's forward."""
    counts = {}
    for name, net in (("timm", copy.deepcopy(vit)), ("fused", fused_copy(vit))):
        frozen_vits_to_bf16(net)
        census = OpCensus()
        with emulated_cuda(torch.bfloat16), mock.patch(
                "torch.nn.functional.scaled_dot_product_attention", fused_attention(census)):
            to_fake_cuda(net)
            image = torch.empty(2, 3, 64, 64, device="cuda")
            with torch.no_grad(), census:
                assert net(image)[0].dtype == torch.float32
        counts[name] = {(op, dtype): row[1] for (_, _, _, op, dtype), row in census.rows.items()}
    fused, timm = counts["fused"], counts["timm"]
    assert sum(fused.values()) <= sum(timm.values()) - 12 * 8
    assert fused.get(("_to_copy", "float32->bfloat16"), 0) <= 1  # the rotation's casts are gone
    assert fused.get(("neg", "bfloat16"), 0) == 0
    assert fused[("add", "bfloat16")] == timm[("add", "bfloat16")] + 12  # rounded as it is added


def test_a_separately_added_bias_still_takes_the_fast_path(vit) -> None:
    """``qkv_bias_separate`` calls the projection module itself (dynamic int8 swaps it)."""
    plain = copy.deepcopy(vit).eval()
    fused = fused_copy(plain)
    for net in (plain, fused):
        for block in net.model.blocks:
            block.attn.qkv_bias_separate = True
    image = torch.randn(1, 3, 48, 48)
    with mock.patch.object(rope_attention, "rotate_qk", wraps=rotate_qk) as spy, \
            torch.no_grad():
        assert torch.equal(fused(image)[0], plain(image)[0])
    assert spy.call_count == 12
