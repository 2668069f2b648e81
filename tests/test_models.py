"""Encoders, the coarse-to-fine decoder and the face parser: shapes, contracts, keys."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from conftest import state_shapes

from faceparse.losses import DeepSupervisionLoss
from faceparse.models import (
    CoarseToFineDecoder,
    DinoVitEncoder,
    DualEncoder,
    Encoder,
    FaceParser,
    VggEncoder,
    VitPyramidEncoder,
)
from faceparse.models import dinov3 as dinov3_module
from faceparse.models.dinov3_weights import load_dinov3_weights
from faceparse.models.vgg import load_vgg_weights

H, W = 32, 48  # non-square, a multiple of 16
VIT_CHANNELS = {"small": 384, "base": 768, "large": 1024}
TINY_DECODER = partial(CoarseToFineDecoder, decoder_channels=32)

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def vgg19() -> VggEncoder:
    torch.manual_seed(0)
    return VggEncoder("vgg19_bn").eval()


@pytest.fixture(scope="module")
def vgg19_5() -> VggEncoder:
    torch.manual_seed(0)
    return VggEncoder("vgg19_bn", num_stages=5).eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(0))


def assert_pyramid(maps: list[torch.Tensor], channels, strides, batch: int = 2) -> None:
    assert [tuple(m.shape) for m in maps] == [
        (batch, c, H // s, W // s) for c, s in zip(channels, strides, strict=True)
    ]


# --------------------------------------------------------------------------- VGG


@pytest.mark.parametrize("arch", ["vgg19_bn", "vgg11_bn"])
def test_vgg_encoder_taps_before_each_pool(arch: str, vgg19: VggEncoder, images) -> None:
    encoder = vgg19 if arch == "vgg19_bn" else VggEncoder(arch).eval()
    assert encoder.out_channels == (64, 128, 256, 512)
    assert encoder.strides == (1, 2, 4, 8)
    with torch.no_grad():
        maps = encoder(images)
    assert_pyramid(maps, encoder.out_channels, encoder.strides)


def test_vgg_five_stages_add_block5_at_stride_16(vgg19_5: VggEncoder, images) -> None:
    assert vgg19_5.out_channels == (64, 128, 256, 512, 512)
    assert vgg19_5.strides == (1, 2, 4, 8, 16)
    with torch.no_grad():
        maps = vgg19_5(images)
    assert_pyramid(maps, vgg19_5.out_channels, vgg19_5.strides)


def test_vgg_layers_match_torchvision_features(vgg19: VggEncoder, vgg19_5: VggEncoder) -> None:
    reference = torchvision.models.vgg19_bn(weights=None).features
    ref = state_shapes(reference)
    # Four stages: modules 0..38 (everything before the fourth max-pool, index 39).
    def first(n: int) -> dict[str, tuple[int, ...]]:
        return {k: v for k, v in ref.items() if int(k.split(".")[0]) < n}

    assert state_shapes(vgg19.layers) == first(39)
    assert len(vgg19.layers) == 39
    # Five stages: everything before the fifth max-pool (index 52).
    assert state_shapes(vgg19_5.layers) == first(52)


def test_vgg_keys_match_original_checkpoint(vgg19: VggEncoder, seed_checkpoint_shapes) -> None:
    expected = {
        k.removeprefix("encoder."): v
        for k, v in seed_checkpoint_shapes.items()
        if k.startswith("encoder.cnn.")
    }
    assert expected, "the fixture lists encoder.cnn keys"
    assert state_shapes(vgg19, prefix="cnn.") == expected


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"num_stages": 0}, "num_stages"), ({"num_stages": 6}, "num_stages"),
     ({"arch": "vgg99_bn"}, "vgg99_bn")],
)
def test_vgg_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        VggEncoder(**kwargs)


def test_vgg_loads_torchvision_weights_file(tmp_path) -> None:
    reference = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["A"], True)
    state = {f"features.{k}": v for k, v in reference.state_dict().items()}
    state["classifier.6.bias"] = torch.zeros(3)  # other torchvision keys are ignored
    path = tmp_path / "vgg11_bn.pth"
    torch.save(state, path)
    encoder = VggEncoder("vgg11_bn", weights=path)
    for key, value in encoder.layers.state_dict().items():
        assert torch.equal(value, reference.state_dict()[key]), key

    torch.save({"features.0.weight": state["features.0.weight"]}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="missing"):
        load_vgg_weights(encoder.layers, tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError, match="vgg19_bn-c79401a0"):
        load_vgg_weights(encoder.layers, tmp_path / "absent.pth")


# --------------------------------------------------------------------------- DINOv3 ViT


@pytest.mark.parametrize("size", ["small", "base", "large"])
def test_dino_vit_map_channels_and_stride(size: str, vit_small: DinoVitEncoder) -> None:
    encoder = vit_small if size == "small" else DinoVitEncoder(size, random_init=True)
    batch = 1 if size == "large" else 2
    x = torch.randn(batch, 3, H, W)
    (out,) = encoder(x)
    assert encoder.out_channels == (VIT_CHANNELS[size],)
    assert encoder.strides == (16,)
    assert out.shape == (batch, VIT_CHANNELS[size], H // 16, W // 16)


def test_dino_vit_is_frozen(vit_small: DinoVitEncoder, images) -> None:
    assert not any(p.requires_grad for p in vit_small.parameters())
    vit_small.train()
    try:
        assert not vit_small.model.training
        assert not any(m.training for m in vit_small.model.modules())
        x = images.clone().requires_grad_(True)
        (out,) = vit_small(x)
        assert out.grad_fn is None and not out.requires_grad
    finally:
        vit_small.eval()


def test_dino_vit_can_be_fine_tuned(images) -> None:
    encoder = DinoVitEncoder("small", random_init=True, frozen=False).train()
    assert all(p.requires_grad for p in encoder.parameters())
    assert encoder.model.training
    (out,) = encoder(images)
    assert out.grad_fn is not None


def test_dino_vit_patch_tokens_are_final_normed(vit_small: DinoVitEncoder, images) -> None:
    """The map is the final-normed patch tokens (class and register tokens dropped)."""
    with torch.no_grad():
        (out,) = vit_small(images)
        tokens = vit_small.model.forward_features(images)
    patches = tokens[:, vit_small.model.num_prefix_tokens :]
    expected = patches.reshape(2, H // 16, W // 16, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(out, expected)


def test_dino_vit_several_layers_concatenate(vit_small: DinoVitEncoder, images) -> None:
    encoder = DinoVitEncoder("small", random_init=True, layers=[2, -1])
    encoder.load_state_dict(vit_small.state_dict())
    assert encoder.out_channels == (2 * 384,)
    (both,) = encoder(images)
    assert both.shape == (2, 768, H // 16, W // 16)
    # The second half is the last layer's map, i.e. the single-layer encoder's output.
    (last,) = vit_small(images)
    torch.testing.assert_close(both[:, 384:], last)
    assert not torch.allclose(both[:, :384], last)


def test_dino_vit_explicit_attention_matches_fused(
    vit_small: DinoVitEncoder, images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fused_attn=False`` computes the same map without calling PyTorch's SDPA."""
    sdpa = torch.nn.functional.scaled_dot_product_attention
    calls = []

    def counting_sdpa(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    explicit = DinoVitEncoder("small", random_init=True, fused_attn=False)
    explicit.load_state_dict(vit_small.state_dict())
    with torch.no_grad():
        (expected,) = vit_small(images)
        fused_calls = len(calls)
        (out,) = explicit(images)
    assert fused_calls == len(vit_small.model.blocks)
    assert len(calls) == fused_calls  # the explicit path never reached SDPA
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_dino_vit_unknown_size() -> None:
    with pytest.raises(ValueError, match="huge"):
        DinoVitEncoder("huge", random_init=True)


@pytest.mark.parametrize("layers", [[4], [-5], [0, 7]])
def test_dino_vit_rejects_layers_outside_the_model(tiny_vit, layers: list[int]) -> None:
    """A 4-block ViT has blocks 0..3 (or -4..-1); block 4 must not silently become block 0
    (e.g. ViT-L indices [5, 11, 17, 23] used with ViT-S would quietly feed 5, 11, 5, 11)."""
    with pytest.raises(ValueError, match="layer"):
        DinoVitEncoder("small", random_init=True, layers=layers)


def test_dino_vit_out_channels_match_its_output(tiny_vit) -> None:
    """``[-1, 3]`` names block 3 twice on a 4-block ViT: refused by name; two distinct
    blocks give the channel count the decoder is built from."""
    with pytest.raises(ValueError, match=r"vit.layers=\[-1,3\] names the same block twice"):
        DinoVitEncoder("small", random_init=True, layers=[-1, 3])
    encoder = DinoVitEncoder("small", random_init=True, layers=[-1, 2])
    (out,) = encoder(torch.randn(1, 3, 32, 32))
    assert out.shape[1] == encoder.out_channels[0] == 2 * 64


@pytest.fixture
def tiny_vit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``DinoVitEncoder`` build a 4-block, 64-wide DINOv3 ViT (the fixture's shape)."""
    create = timm.create_model

    def tiny(name: str, **kwargs):
        return create(name, embed_dim=64, depth=4, num_heads=4, **kwargs)

    monkeypatch.setattr(dinov3_module.timm, "create_model", tiny)


@pytest.fixture
def tiny_dinov3(tiny_vit, dinov3_fixture: Path) -> Path:
    return dinov3_fixture


def test_dino_vit_reproduces_official_outputs(tiny_dinov3: Path) -> None:
    io = torch.load(tiny_dinov3 / "dinov3_tiny_io.pt")
    weights = tiny_dinov3 / "dinov3_tiny_official.pth"
    x = io["input"]
    b, _, h, w = x.shape

    last = DinoVitEncoder("small", weights=weights)
    (out,) = last(x)
    expected = io["x_norm_patchtokens"].reshape(b, h // 16, w // 16, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)

    every = DinoVitEncoder("small", layers=[0, 1, 2, 3], weights=weights)
    (out,) = every(x)
    torch.testing.assert_close(
        out, torch.cat(io["intermediate_normed_reshaped"], dim=1), atol=1e-5, rtol=1e-5
    )


def test_dinov3_loader_rejects_wrong_checkpoints(dinov3_fixture: Path, tmp_path: Path) -> None:
    weights = dinov3_fixture / "dinov3_tiny_official.pth"
    narrower = timm.create_model(
        "vit_small_patch16_dinov3_qkvb", embed_dim=32, depth=4, num_heads=4
    )
    with pytest.raises(ValueError, match="does not fit"):
        load_dinov3_weights(narrower, weights)
    deeper = timm.create_model("vit_small_patch16_dinov3_qkvb", embed_dim=64, depth=5, num_heads=4)
    with pytest.raises(ValueError, match="missing"):
        load_dinov3_weights(deeper, weights)
    with pytest.raises(FileNotFoundError, match="facebookresearch/dinov3"):
        load_dinov3_weights(deeper, tmp_path / "absent.pth")


# --------------------------------------------------------------------------- composite encoders


def test_dual_encoder(vgg19: VggEncoder, vit_small: DinoVitEncoder, images) -> None:
    encoder = DualEncoder(vgg19, vit_small)
    assert encoder.out_channels == (64, 128, 256, 512, 384)
    assert encoder.strides == (1, 2, 4, 8, 16)
    with torch.no_grad():
        maps = encoder(images)
    assert_pyramid(maps, encoder.out_channels, encoder.strides)


def test_vit_pyramid_encoder(vit_small: DinoVitEncoder, images) -> None:
    encoder = VitPyramidEncoder(vit_small, pyramid_channels=(8, 16, 32, 64)).eval()
    assert encoder.out_channels == (8, 16, 32, 64, 384)
    assert encoder.strides == (1, 2, 4, 8, 16)
    with torch.no_grad():
        maps = encoder(images)
    assert_pyramid(maps, encoder.out_channels, encoder.strides)


# --------------------------------------------------------------------------- face parser


class StubVit(Encoder):
    """Stands in for the ViT-L branch (whose weights the original checkpoints drop)."""

    out_channels = (1024,)
    strides = (16,)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b, _, h, w = x.shape
        return [x.new_zeros(b, 1024, h // 16, w // 16)]


def test_face_parser_keys_equal_original_checkpoint(vgg19, seed_checkpoint_shapes) -> None:
    """The reference wiring names every weight as the original project's checkpoints do."""
    parser = FaceParser(
        DualEncoder(vgg19, StubVit()), partial(CoarseToFineDecoder, decoder_channels=256), 11
    )
    assert state_shapes(parser) == seed_checkpoint_shapes


@pytest.mark.parametrize("variant", ["dual", "cnn", "vit"])
def test_face_parser_output_shape(variant: str, vgg19, vgg19_5, vit_small, images) -> None:
    encoder = {
        "dual": lambda: DualEncoder(vgg19, vit_small),
        "cnn": lambda: vgg19_5,
        "vit": lambda: VitPyramidEncoder(vit_small, pyramid_channels=(8, 16, 32, 64)),
    }[variant]()
    parser = FaceParser(encoder, TINY_DECODER, num_classes=7).eval()
    assert parser.decoder.in_channels == encoder.out_channels
    with torch.no_grad():
        logits = parser(images)
        _, aux = parser.forward_with_aux(images)
    assert logits.shape == (2, 7, H, W)
    assert len(aux) == 3 and all(a.shape == (2, 7, H, W) for a in aux)


def test_face_parser_rejects_sizes_not_multiple_of_16(vgg19_5) -> None:
    parser = FaceParser(vgg19_5, TINY_DECODER, num_classes=3).eval()
    with pytest.raises(ValueError, match="multiple of 16") as info:
        parser(torch.randn(1, 3, 40, 48))
    assert "48x48" in str(info.value)  # the nearest valid size is suggested
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        parser(torch.randn(1, 1, 32, 32))


def test_the_encoder_contract_is_checked_at_construction(vit_small) -> None:
    """Encoder and decoder meet through one contract; a mismatch names both sides."""
    shallow = VggEncoder("vgg11_bn", num_stages=4)
    with pytest.raises(ValueError, match=r"CoarseToFineDecoder needs feature maps at strides "
                       r"\(1, 2, 4, 8, 16\), but VggEncoder gives strides \(1, 2, 4, 8\)"):
        FaceParser(shallow, TINY_DECODER, num_classes=3)
    with pytest.raises(TypeError, match="not a faceparse.models.Encoder"):
        FaceParser(torch.nn.Conv2d(3, 8, 1), TINY_DECODER, num_classes=3)
    with pytest.raises(ValueError, match="CNN to stop below the ViT"):
        DualEncoder(VggEncoder("vgg11_bn", num_stages=5), vit_small)
    # the input size multiple is the encoder's coarsest stride, not a constant elsewhere
    assert shallow.size_multiple == 8 and vit_small.size_multiple == 16
    parser = FaceParser(VitPyramidEncoder(vit_small, (8, 16, 32, 64)), TINY_DECODER, 3)
    assert parser.size_multiple == vit_small.strides[0] == 16


def test_gradients_reach_cnn_and_decoder_not_frozen_vit(vit_small, images) -> None:
    torch.manual_seed(0)
    parser = FaceParser(DualEncoder(VggEncoder("vgg11_bn"), vit_small), TINY_DECODER, 4).train()
    logits, aux = parser.forward_with_aux(images)
    target = torch.randint(0, 4, (2, H, W))
    DeepSupervisionLoss()(logits, aux, target)["loss"].backward()
    cnn_grads = [p.grad for p in parser.encoder.cnn.parameters()]
    decoder_grads = [p.grad for p in parser.decoder.parameters()]
    assert all(g is not None for g in cnn_grads) and any(g.abs().sum() > 0 for g in cnn_grads)
    assert all(g is not None for g in decoder_grads)
    assert parser.encoder.cnn.layers[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in parser.encoder.vit.parameters())
    vit_small.eval()
