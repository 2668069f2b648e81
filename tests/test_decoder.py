"""The coarse-to-fine decoder: outputs, input checks and the original checkpoint's keys."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import state_shapes

from faceparse.bench.census import emulated_cuda
from faceparse.models import CoarseToFineDecoder
from faceparse.models.blocks import upsample_bilinear

H, W = 32, 48  # non-square, a multiple of 16

pytestmark = pytest.mark.usefixtures("torch_single_thread")


# --------------------------------------------------------------------------- decoder

PYRAMID = (8, 16, 32, 64, 96)
STRIDES = (1, 2, 4, 8, 16)


def pyramid_maps(batch: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(batch, c, H // s, W // s, generator=g)
        for c, s in zip(PYRAMID, STRIDES, strict=True)
    ]


def test_decoder_logits_and_aux() -> None:
    decoder = CoarseToFineDecoder(PYRAMID, num_classes=5, decoder_channels=32).eval()
    with torch.no_grad():
        logits, aux = decoder(pyramid_maps())
        assert logits.shape == (2, 5, H, W)
        assert list(aux) == []
        logits_aux, aux = decoder(pyramid_maps(), with_aux=True)
    assert len(aux) == 3
    assert all(a.shape == (2, 5, H, W) for a in aux)
    torch.testing.assert_close(logits_aux, logits)


def test_decoder_checks_its_inputs() -> None:
    with pytest.raises(ValueError, match=r"1, 2, 4, 8, 16"):
        CoarseToFineDecoder((64, 128, 256, 512), num_classes=3)
    with pytest.raises(ValueError, match="multiple of 16"):
        CoarseToFineDecoder(PYRAMID, num_classes=3, decoder_channels=40)
    decoder = CoarseToFineDecoder(PYRAMID, num_classes=3, decoder_channels=32)
    with pytest.raises(ValueError, match="5 feature maps"):
        decoder(pyramid_maps()[1:])


def test_decoder_without_attention_refinement() -> None:
    decoder = CoarseToFineDecoder(PYRAMID, 3, decoder_channels=32, attention_refinement=False)
    assert not any(k.startswith("arm16.") for k in decoder.state_dict())
    assert decoder.eval()(pyramid_maps())[0].shape == (2, 3, H, W)


def test_decoder_keys_equal_original_checkpoint(seed_checkpoint_shapes) -> None:
    expected = {
        k.removeprefix("decoder."): v
        for k, v in seed_checkpoint_shapes.items()
        if k.startswith("decoder.")
    }
    decoder = CoarseToFineDecoder((64, 128, 256, 512, 1024), num_classes=11, decoder_channels=256)
    actual = state_shapes(decoder)
    assert sorted(set(expected) - set(actual)) == []
    assert sorted(set(actual) - set(expected)) == []
    assert actual == expected


def test_decoder_19_class_vit_b_variant(seed_checkpoint_shapes) -> None:
    """The fixture says: differs only in adapt_scale16 (768 in) and the heads' class dim."""
    decoder = CoarseToFineDecoder((64, 128, 256, 512, 768), num_classes=19, decoder_channels=256)
    actual = state_shapes(decoder)
    base = {k.removeprefix("decoder."): v for k, v in seed_checkpoint_shapes.items()
            if k.startswith("decoder.")}
    changed = {k for k in actual if actual[k] != base[k]}
    assert actual["adapt_scale16.conv.weight"] == (512, 768, 1, 1)
    assert changed == {
        "adapt_scale16.conv.weight",
        *(f"aux_head_{s}.{p}" for s in (8, 4, 2) for p in ("weight", "bias")),
        "final_conv.2.weight", "final_conv.2.bias",
    }
    assert all(actual[k][0] == 19 for k in changed - {"adapt_scale16.conv.weight"})


def test_upsample_bilinear_keeps_the_dtype_it_is_given() -> None:
    """Where CUDA autocast would hand back fp32 (the census emulates it), bf16 stays bf16."""
    x = torch.randn(2, 4, 5, 7)
    torch.testing.assert_close(upsample_bilinear(x, (10, 14)),
                               F.interpolate(x, size=(10, 14), mode="bilinear"), rtol=0, atol=0)
    with torch.autocast("cpu", torch.bfloat16):  # the CPU's autocast already keeps bf16
        low = x.to(torch.bfloat16)
        assert torch.equal(upsample_bilinear(low, (10, 14)),
                           F.interpolate(low, size=(10, 14), mode="bilinear"))
    with emulated_cuda(torch.bfloat16):
        fake = torch.empty(2, 4, 5, 7, device="cuda", dtype=torch.bfloat16)
        assert upsample_bilinear(fake, (10, 14)).dtype == torch.bfloat16
        assert upsample_bilinear(fake.float(), (10, 14)).dtype == torch.float32
