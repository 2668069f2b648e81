"""Inference-only rewrites: BatchNorm folded into convolutions, LayerScale folded into the
ViT's linear layers, a bf16 frozen ViT."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from faceparse.fast_path import FastPath
from faceparse.inference import prepare_for_inference
from faceparse.inference.fold import fold_batchnorm, fold_layer_scale
from faceparse.models.dinov3 import frozen_vits_to_bf16

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture
def scaled_vit_net(compose, tiny) -> nn.Module:
    """The tiny dual net whose ViT blocks scale their branches by far more than 1e-5."""
    torch.manual_seed(0)
    net = instantiate(compose(tiny).model.net)
    for name, param in net.encoder.vit.named_parameters():
        if name.rsplit(".", 1)[-1] in ("gamma_1", "gamma_2"):
            param.data.uniform_(0.2, 1.5)
    return net.eval()


def _layer_scales(net: nn.Module) -> list[torch.Tensor]:
    return [p for name, p in net.named_parameters()
            if name.rsplit(".", 1)[-1] in ("gamma_1", "gamma_2")]


def _batchnorms(net: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())


def test_folding_removes_every_batchnorm_and_keeps_the_logits(trained_looking_net) -> None:
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = trained_looking_net(x)
    count = _batchnorms(trained_looking_net)
    assert fold_batchnorm(trained_looking_net) == count > 20  # VGG, decoder, attention gate
    assert _batchnorms(trained_looking_net) == 0
    with torch.no_grad():
        after = trained_looking_net(x)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


def test_folding_refuses_a_net_in_training_mode(trained_looking_net) -> None:
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(trained_looking_net.train())


def test_prepare_for_inference_folds_unless_told_not_to(compose, tiny) -> None:
    net = instantiate(compose(tiny).model.net)
    kept = prepare_for_inference(net, "cpu", FastPath(channels_last=False, fold_batchnorm=False))
    assert _batchnorms(kept) > 0
    folded = prepare_for_inference(kept, "cpu", FastPath(channels_last=False))
    assert _batchnorms(folded) == 0


def test_a_bf16_frozen_vit_gives_maps_in_the_callers_dtype_close_to_fp32(compose, tiny
                                                                         ) -> None:
    torch.manual_seed(0)
    net = instantiate(compose(tiny).model.net).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = net(x)
        vit_reference = net.encoder.vit(x)[0]
    assert frozen_vits_to_bf16(net) == 1
    vit = net.encoder.vit
    assert {p.dtype for p in vit.model.parameters()} == {torch.bfloat16}
    buffers = dict(vit.model.named_buffers())
    assert buffers and all(b.dtype == torch.float32 for name, b in buffers.items()
                           if name.startswith("rope."))  # RoPE stays fp32
    # the zero key bias, outside state_dict, follows the query bias it is concatenated with
    assert all(b.dtype == torch.bfloat16 for name, b in buffers.items()
               if name.endswith(".k_bias"))
    with torch.no_grad():
        vit_map = vit(x)[0]
        logits = net(x)
    assert vit_map.dtype == logits.dtype == torch.float32
    # bf16 keeps ~3 significant digits: the map moves by a few percent of its scale
    scale = vit_reference.abs().mean()
    assert (vit_map - vit_reference).abs().mean() < 0.05 * scale
    agreement = (logits.argmax(1) == reference.argmax(1)).float().mean()
    assert agreement > 0.9


def test_a_vit_with_trained_blocks_keeps_them_in_fp32() -> None:
    from faceparse.models import DinoVitEncoder

    vit = DinoVitEncoder(size="small", random_init=True, finetune_blocks=1)
    assert vit.store_frozen_weights(torch.bfloat16)
    dtypes = {p.dtype for p in vit.model.blocks[-1].parameters()}
    assert dtypes == {torch.float32}
    assert {p.dtype for p in vit.model.blocks[0].parameters()} == {torch.bfloat16}


def test_the_bf16_vit_option_is_validated() -> None:
    with pytest.raises(ValueError, match="frozen_vit_bf16"):
        FastPath(frozen_vit_bf16="maybe").wants_frozen_vit_bf16(torch.device("cpu"))
    assert FastPath(frozen_vit_bf16=True).wants_frozen_vit_bf16(torch.device("cpu"))


def test_the_vit_keeps_its_callers_autocast(vit_small) -> None:
    """Training and bf16 inference run the ViT under the caller's autocast (not fp32)."""
    seen = []
    handles = [m.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
               for m in vit_small.model.blocks[0].modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
            vit_small(torch.randn(1, 3, 32, 32))
    finally:
        for handle in handles:
            handle.remove()
    assert vit_small.compute_dtype is None and seen and set(seen) == {torch.bfloat16}


def test_folding_layer_scale_keeps_the_vit_maps_and_the_logits(scaled_vit_net) -> None:
    net = scaled_vit_net
    blocks = net.encoder.vit.model.blocks
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        maps, logits = net.encoder.vit(x)[0], net(x)
    attn_weight, gamma_1 = blocks[0].attn.proj.weight.clone(), blocks[0].gamma_1.clone()
    assert fold_layer_scale(net) == 2 * len(blocks)
    assert not _layer_scales(net) and blocks[0].gamma_1 is None
    torch.testing.assert_close(blocks[0].attn.proj.weight, attn_weight * gamma_1[:, None])
    with torch.no_grad():
        torch.testing.assert_close(net.encoder.vit(x)[0], maps, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(net(x), logits, atol=1e-5, rtol=1e-5)
    assert fold_layer_scale(net) == 0  # nothing left to fold


def test_layer_scale_is_folded_in_fp32_before_the_vit_goes_to_bf16(scaled_vit_net) -> None:
    block = scaled_vit_net.encoder.vit.model.blocks[1]
    weight, bias = block.mlp.fc2.weight.clone(), block.mlp.fc2.bias.clone()
    gamma = block.gamma_2.clone()
    net = prepare_for_inference(scaled_vit_net, "cpu",
                                FastPath(channels_last=False, frozen_vit_bf16=True))
    fc2 = net.encoder.vit.model.blocks[1].mlp.fc2
    assert fc2.weight.dtype == torch.bfloat16
    # one rounding, of the fp32 product: not the product of weights already rounded
    assert torch.equal(fc2.weight, (weight * gamma[:, None]).to(torch.bfloat16))
    assert torch.equal(fc2.bias, (bias * gamma).to(torch.bfloat16))


def test_prepare_for_inference_folds_layer_scale_unless_told_not_to(compose, tiny) -> None:
    net = instantiate(compose(tiny).model.net)
    count = len(_layer_scales(net))
    assert count == 2 * len(net.encoder.vit.model.blocks)
    kept = prepare_for_inference(net, "cpu", FastPath(channels_last=False,
                                                      fold_layer_scale=False))
    assert len(_layer_scales(kept)) == count
    folded = prepare_for_inference(kept, "cpu", FastPath(channels_last=False))
    assert not _layer_scales(folded)


def test_a_block_with_its_own_forward_keeps_its_layer_scale() -> None:
    from timm.models.eva import EvaBlock

    class GatedBlock(EvaBlock):  # uses gamma_1 some other way: folding would be wrong
        def forward(self, x: torch.Tensor, rope=None, attn_mask=None, is_causal=False):
            return x + self.gamma_1.sigmoid() * self.attn(self.norm1(x), rope=rope)

    net = nn.Sequential(GatedBlock(dim=32, num_heads=2, init_values=0.5),
                        EvaBlock(dim=32, num_heads=2, init_values=0.5),
                        EvaBlock(dim=32, num_heads=2))  # no LayerScale at all
    assert fold_layer_scale(net) == 2
    assert net[0].gamma_1 is not None and net[1].gamma_1 is None and net[1].gamma_2 is None
