"""Pretrained weights: DINOv3 (official and timm files, clear mismatch errors, fine-tuning
the last blocks) and VGG-BN (torchvision keys, the torch hub cache, offline errors).

The DINOv3 reproduction of Meta's outputs is in test_models.py; these tests use the
copy of that fixture in tests/fixtures/dinov3.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from faceparse.models import DinoVitEncoder, VggEncoder
from faceparse.models import dinov3 as dinov3_module
from faceparse.models.dinov3_weights import describe_vit, dinov3_filter, load_dinov3_weights
from faceparse.models.vgg import vgg_features_filter, vgg_hub_file
from faceparse.training.optim import build_optimizer

FIXTURE = Path(__file__).parent / "fixtures" / "dinov3"
OFFICIAL = FIXTURE / "dinov3_tiny_official.pth"
TIMM_NAME = "vit_small_patch16_dinov3_qkvb"

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def tiny_timm_vit(width: int = 64, depth: int = 4) -> torch.nn.Module:
    return timm.create_model(
        TIMM_NAME, embed_dim=width, depth=depth, num_heads=4, dynamic_img_size=True
    ).eval()


@pytest.fixture
def tiny_vit(monkeypatch: pytest.MonkeyPatch) -> None:
    """``DinoVitEncoder`` builds the fixture's 4-block, 64-wide DINOv3 ViT."""
    create = timm.create_model
    tiny = partial(create, embed_dim=64, depth=4, num_heads=4)
    monkeypatch.setattr(dinov3_module.timm, "create_model", lambda name, **kw: tiny(name, **kw))


@pytest.fixture(scope="module")
def io() -> dict:
    return torch.load(FIXTURE / "dinov3_tiny_io.pt", weights_only=True)


def patch_tokens(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_features(x)[:, model.num_prefix_tokens :]


# --------------------------------------------------------------------------- DINOv3 files


def test_fixture_copy_matches_its_readme() -> None:
    assert (FIXTURE / "README.md").read_text().startswith("# DINOv3 official-format fixture")
    state = torch.load(OFFICIAL, weights_only=True)
    assert {"storage_tokens", "rope_embed.periods", "blocks.0.attn.qkv.bias_mask"} <= set(state)


def test_official_file_reproduces_class_and_register_tokens(io) -> None:
    """Beyond the patch tokens (test_models.py): class and storage tokens match too."""
    model = tiny_timm_vit()
    load_dinov3_weights(model, OFFICIAL)
    with torch.no_grad():
        tokens = model.forward_features(io["input"])
    torch.testing.assert_close(tokens[:, 0], io["x_norm_clstoken"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tokens[:, 1:5], io["x_storage_tokens"], atol=1e-5, rtol=1e-5)


def test_timm_safetensors_file_loads(tmp_path: Path, io) -> None:
    """timm's converted weights (its own key names, .safetensors) give the same model."""
    reference = tiny_timm_vit()
    load_dinov3_weights(reference, OFFICIAL)
    path = tmp_path / "model.safetensors"
    save_file(reference.state_dict(), str(path))
    model = tiny_timm_vit()
    load_dinov3_weights(model, path)
    assert torch.equal(patch_tokens(model, io["input"]), patch_tokens(reference, io["input"]))


def test_bias_free_timm_file_gets_zero_query_value_biases(tmp_path: Path, io) -> None:
    """timm's bias-free DINOv3 conversion has no q/v biases: they are zero, not missing."""
    reference = tiny_timm_vit()
    load_dinov3_weights(reference, OFFICIAL)
    with torch.no_grad():
        for block in reference.blocks:
            block.attn.q_bias.zero_()
            block.attn.v_bias.zero_()
    state = {k: v for k, v in reference.state_dict().items()
             if not k.endswith(("q_bias", "v_bias"))}
    path = tmp_path / "bias_free.safetensors"
    save_file(state, str(path))
    model = tiny_timm_vit()
    load_dinov3_weights(model, path)
    assert torch.equal(patch_tokens(model, io["input"]), patch_tokens(reference, io["input"]))


def test_an_official_file_without_its_biases_is_refused_as_damaged(tmp_path: Path) -> None:
    """Meta's files carry qkv.bias: one that lost them is cut or damaged (it loaded with
    zero biases before), and the message does not blame vit.size when the sizes agree."""
    official = torch.load(OFFICIAL, weights_only=True)
    torch.save({k: v for k, v in official.items() if not k.endswith("attn.qkv.bias")},
               tmp_path / "cut.pth")
    with pytest.raises(ValueError, match=r"like this encoder, but not all of its weights "
                                         r"\(damaged or cut\?.*missing keys") as refused:
        load_dinov3_weights(tiny_timm_vit(), tmp_path / "cut.pth")
    assert "set vit.size" not in str(refused.value)


def test_filter_is_pure_and_maps_official_names() -> None:
    official = torch.load(OFFICIAL, weights_only=True)
    before = {k: v.clone() for k, v in official.items()}
    state = dinov3_filter(official, tiny_timm_vit())
    assert set(state) == set(tiny_timm_vit().state_dict())
    assert torch.equal(state["reg_token"], official["storage_tokens"])
    assert torch.equal(state["blocks.2.gamma_1"], official["blocks.2.ls1.gamma"])
    q, _, v = official["blocks.0.attn.qkv.bias"].chunk(3)
    assert torch.equal(state["blocks.0.attn.q_bias"], q)
    assert torch.equal(state["blocks.0.attn.v_bias"], v)
    assert all(torch.equal(official[k], before[k]) for k in before)


def test_describe_real_vit_l_from_its_key_list() -> None:
    shapes = json.loads((FIXTURE / "vitl16_official_keys.json").read_text())
    shapes = shapes.get("state_dict", shapes)
    state = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    assert describe_vit(state) == "ViT-L/16 (width 1024, 24 blocks)"


def test_file_of_another_size_names_both_and_the_shapes() -> None:
    """Like a ViT-B file for a ViT-L config: both architectures and shapes are named."""
    wider = tiny_timm_vit(width=128, depth=6)
    with pytest.raises(ValueError) as info:
        load_dinov3_weights(wider, OFFICIAL)
    message = str(info.value)
    assert "holds a 64-wide ViT (width 64, 4 blocks)" in message
    assert "128-wide ViT (width 128, 6 blocks)" in message
    assert "expected (1, 1, 128), found (1, 1, 64)" in message
    assert "vit.size" in message


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_copy_of_the_official_file_loads(tmp_path: Path, dtype) -> None:
    """A copy saved in fp16/bf16 (half the size) holds rounded RoPE periods: loaded, with
    each weight as the copy holds it; another RoPE base is still refused at that precision."""
    state = {k: v.to(dtype) if v.is_floating_point() else v
             for k, v in torch.load(OFFICIAL, weights_only=True).items()}
    torch.save(state, tmp_path / "half.pth")
    model = tiny_timm_vit()
    load_dinov3_weights(model, tmp_path / "half.pth")
    assert torch.equal(model.cls_token, state["cls_token"].float())
    state["rope_embed.periods"] = state["rope_embed.periods"] * 1.5
    torch.save(state, tmp_path / "other_rope.pth")
    with pytest.raises(ValueError, match="another RoPE base"):
        load_dinov3_weights(tiny_timm_vit(), tmp_path / "other_rope.pth")


def test_wrong_file_is_not_a_dinov3_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "vgg.pth"
    torch.save(torchvision.models.vgg.make_layers([8, "M"], True).state_dict(), path)
    with pytest.raises(ValueError, match="not a DINOv3 ViT checkpoint"):
        load_dinov3_weights(tiny_timm_vit(), path)


def test_other_rope_base_is_refused(tmp_path: Path) -> None:
    state = torch.load(OFFICIAL, weights_only=True)
    state["rope_embed.periods"] = state["rope_embed.periods"] * 2
    torch.save(state, tmp_path / "other_rope.pth")
    with pytest.raises(ValueError, match="RoPE"):
        load_dinov3_weights(tiny_timm_vit(), tmp_path / "other_rope.pth")


def test_missing_file_says_where_to_get_and_put_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        DinoVitEncoder("small", weights=tmp_path / "dinov3_vits16.pth")
    message = str(info.value)
    assert "facebookresearch/dinov3" in message
    assert "dinov3_vits16_pretrain_lvd1689m-*.pth" in message
    assert "checkpoints/" in message and "paths.checkpoint_dir" in message


# --------------------------------------------------------------------------- fine-tuning


def test_finetune_last_blocks(tiny_vit) -> None:
    encoder = DinoVitEncoder("small", weights=OFFICIAL, finetune_blocks=2)
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.blocks.2.", "model.blocks.3.", "model.norm."))
                             for n in trainable)
    assert {n.split(".")[2] for n in trainable if ".blocks." in n} == {"2", "3"}
    random = DinoVitEncoder("small", random_init=True)
    assert set(encoder.state_dict()) == set(random.state_dict())
    encoder.train()
    assert encoder.model.blocks[3].training and not encoder.model.blocks[1].training
    (out,) = encoder(torch.randn(1, 3, 32, 32))
    out.sum().backward()
    assert encoder.model.blocks[3].mlp.fc1.weight.grad is not None
    assert encoder.model.blocks[0].mlp.fc1.weight.grad is None
    with pytest.raises(ValueError, match="finetune_blocks"):
        DinoVitEncoder("small", random_init=True, finetune_blocks=5)


def test_tuned_blocks_train_from_the_start(tiny_vit) -> None:
    """Lightning keeps the modes a module is built in: tuned blocks start in train mode,
    the frozen ones in eval mode, before any ``.train()`` call."""
    encoder = DinoVitEncoder("small", random_init=True, finetune_blocks=1)
    assert encoder.model.blocks[3].training and encoder.model.norm.training
    assert not encoder.model.blocks[2].training
    assert not encoder.eval().model.blocks[3].training


@pytest.mark.parametrize(("options", "message"), [
    ({"layers": [1], "finetune_blocks": 2},
     r"vit.layers=\[1\] stops the ViT at block 1: blocks 2-3 would never run or learn"),
    ({"layers": [2], "finetune_blocks": 2},
     r"stops the ViT at block 2: block 3 would never run"),
    ({"frozen": False, "finetune_blocks": 1}, r"vit.frozen=false trains all of it"),
])
def test_tuned_blocks_that_would_train_nothing_are_refused(tiny_vit, options, message
                                                           ) -> None:
    with pytest.raises(ValueError, match=message):
        DinoVitEncoder("small", random_init=True, **options)
    DinoVitEncoder("small", random_init=True, layers=[1, -1], finetune_blocks=2)  # runs all


def test_finetuned_vit_gets_a_lower_learning_rate(tiny_vit) -> None:
    encoder = DinoVitEncoder("small", random_init=True, finetune_blocks=1, lr_scale=0.1)
    net = torch.nn.ModuleDict({"vit": encoder, "head": torch.nn.Conv2d(64, 3, 1)})
    optimizer = build_optimizer(partial(torch.optim.AdamW, lr=1e-3), net)
    lrs = sorted((g["lr"], len(g["params"])) for g in optimizer.param_groups)
    tuned = [p for p in encoder.parameters() if p.requires_grad]
    assert lrs == [(pytest.approx(1e-4), len(tuned)), (1e-3, 2)]


# --------------------------------------------------------------------------- VGG


@pytest.mark.parametrize("num_stages", [4, 5])
def test_vgg_keys_compatible_with_torchvision_state_dict(num_stages: int) -> None:
    """Every key of our layers is torchvision's ``features.<i>`` key, with its shape."""
    with torch.device("meta"):
        full = torchvision.models.vgg19_bn(weights=None).state_dict()
        ours = VggEncoder("vgg19_bn", num_stages=num_stages).layers.state_dict()
    mapped = vgg_features_filter(full)
    assert set(ours) <= set(mapped)
    assert {k: mapped[k].shape for k in ours} == {k: v.shape for k, v in ours.items()}


def test_vgg_pretrained_from_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = vgg_hub_file("vgg11_bn")
    assert cached == tmp_path / "hub" / "checkpoints" / "vgg11_bn-6002323d.pth"
    with pytest.raises(FileNotFoundError) as info:
        VggEncoder("vgg11_bn", pretrained=True)
    assert "vgg11_bn-6002323d.pth" in str(info.value) and str(cached.parent) in str(info.value)

    reference = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["A"], True)
    cached.parent.mkdir(parents=True)
    torch.save({f"features.{k}": v for k, v in reference.state_dict().items()}, cached)
    encoder = VggEncoder("vgg11_bn", pretrained=True)
    for key, value in encoder.layers.state_dict().items():
        assert torch.equal(value, reference.state_dict()[key]), key


def test_vgg_file_saved_before_num_batches_tracked_loads(tmp_path: Path) -> None:
    """torchvision's ImageNet VGG-BN files (2017, legacy format) have no
    ``num_batches_tracked``; torchvision loads them, so must we, with every value kept."""
    reference = torchvision.models.vgg11_bn(weights=None)
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.normal_(module.running_mean)
    old = {k: v for k, v in reference.state_dict().items()
           if not k.endswith("num_batches_tracked")}
    path = tmp_path / "vgg11_bn-6002323d.pth"
    torch.save(old, path, _use_new_zipfile_serialization=False)
    encoder = VggEncoder("vgg11_bn", weights=path)
    for key, value in encoder.layers.state_dict().items():
        expected = torch.zeros((), dtype=torch.long) if key.endswith("num_batches_tracked") \
            else old[f"features.{key}"]
        assert torch.equal(value, expected), key


def test_backbone_file_with_pickled_objects_names_the_way_out(tmp_path: Path) -> None:
    """``trust_pickle`` is for checkpoints and never reaches a backbone's weights: the
    refusal must not send the user there, but to a plain copy of the tensors."""
    path = tmp_path / "vgg_module.pth"
    torch.save(torchvision.models.vgg.make_layers([8, "M"], True), path)  # a pickled module
    with pytest.raises(Exception, match="could run arbitrary code") as info:
        VggEncoder("vgg11_bn", weights=path)
    message = str(info.value)
    assert "trust_pickle=true" not in message
    assert "read data-only" in message and str(path.with_suffix(".plain.pth")) in message


def test_training_a_vgg_from_random_weights_is_said_unless_meant(caplog) -> None:
    """Forgetting cnn.pretrained trains normally, only worse: the run log must say it."""
    from faceparse.models.vgg import warn_random_cnn

    with caplog.at_level("WARNING", logger="faceparse.models.vgg"):
        warn_random_cnn(torch.nn.Sequential(VggEncoder("vgg11_bn", num_stages=1)))
    assert "CNN (0) (vgg11_bn) starts from random weights" in caplog.text
    assert "cnn.pretrained=true" in caplog.text and "cnn.random_init=true" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="faceparse.models.vgg"):
        warn_random_cnn(VggEncoder("vgg11_bn", num_stages=1, random_init=True))
    assert caplog.text == ""


def test_vgg19_bn_hub_file_name() -> None:
    assert vgg_hub_file("vgg19_bn").name == "vgg19_bn-c79401a0.pth"
