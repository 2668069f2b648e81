"""What loading says about a file it cannot use (or a path it does not need): a
``vit_weights=`` a checkpoint holding its ViT ignores, DINOv3 tensors inside the original
project's ``last.ckpt``, DINOv3 files faceparse cannot read (the SwiGLU "plus" variants,
Hugging Face's layout), a VGG features-only file, a wrapper's key prefix, a folder given
for a weight file.

ViTs are the 64-wide, 4-block DINOv3 of tests/fixtures/dinov3 (as in test_checkpoints.py).
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from safetensors.torch import save_file
from test_checkpoints import CREATE_MODEL, _tiny_create, tiny_vit  # noqa: F401 - tiny ViTs

from faceparse.checkpoints import build_net, load_face_parser
from faceparse.checkpoints import original as original_project
from faceparse.inference.model import load_model
from faceparse.models import DinoVitEncoder, VggEncoder
from faceparse.models.dinov3_weights import describe_vit, load_dinov3_weights
from faceparse.models.weights import wrapper_prefix

OFFICIAL = Path(__file__).parent / "fixtures" / "dinov3" / "dinov3_tiny_official.pth"

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def official() -> dict[str, torch.Tensor]:
    return torch.load(OFFICIAL, weights_only=True)


def tiny_timm_vit() -> torch.nn.Module:
    return _tiny_create(CREATE_MODEL, "vit_small_patch16_dinov3_qkvb",
                        dynamic_img_size=True).eval()


# --------------------------------------------------------------------------- 1: vit_weights=


def test_a_missing_vit_weights_is_refused_for_a_checkpoint_holding_its_vit(ckpt: Path) -> None:
    """It loaded without a word before: only eval refused it."""
    with pytest.raises(FileNotFoundError, match=r"^vit_weights=/nonexistent/dinov3\.pth: "
                                                r"no such file"):
        load_face_parser(ckpt, vit_weights="/nonexistent/dinov3.pth")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_model(ckpt, vit_weights="/nonexistent/dinov3.pth", device="cpu")


def test_an_unused_vit_weights_is_said_by_load_face_parser_and_load_model(
        ckpt: Path, tmp_path: Path, caplog) -> None:
    unused = tmp_path / "other_dinov3.pth"
    unused.write_bytes(b"never read")
    with caplog.at_level(logging.WARNING):
        load_face_parser(ckpt, vit_weights=unused)
    assert (f"vit_weights={unused} is not used: {ckpt} reads no DINOv3 file (it holds its own "
            "ViT weights") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_model(ckpt, vit_weights=unused, device="cpu")
    assert f"vit_weights={unused} is not used" in caplog.text


# --------------------------------------------------------------------------- 1c: original files


def original_last_ckpt(path: Path, **edits: torch.Tensor) -> Path:
    """The original project's ``last.ckpt`` (ViT under ``encoder.dinov3.*`` in Meta's
    names), its DINOv3 tensors edited by ``edits``."""
    shapes = {"decoder.adapt_scale16.conv.weight": torch.empty(512, 64, 1, 1),
              "decoder.adapt_scale8.conv.weight": torch.empty(256, 512, 1, 1),
              "decoder.final_conv.2.weight": torch.empty(11, 64, 1, 1)}
    net = build_net(original_project.original_net_config(shapes), {"encoder.vit": str(OFFICIAL)})
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("encoder.vit.")}
    state.update({f"encoder.dinov3.{k}": v for k, v in {**official(), **edits}.items()})
    hparams = OmegaConf.create({"num_classes": 11})
    torch.save({"state_dict": state, "epoch": 1, "global_step": 10,
                "pytorch-lightning_version": "2.5.1", "hyper_parameters": hparams}, path)
    return path


def test_an_original_checkpoint_with_its_dinov3_loads(tmp_path: Path) -> None:
    load_face_parser(original_last_ckpt(tmp_path / "last.ckpt"))


@pytest.mark.parametrize(("edit", "message"), [
    ("rope", r"last\.ckpt \(encoder\.dinov3\.\*\): its RoPE periods differ"),
    ("patch", r"last\.ckpt \(encoder\.dinov3\.\*\) is a ViT with 14x14 patches"),
])
def test_dinov3_tensors_inside_an_original_checkpoint_are_checked_like_a_file(
        tmp_path: Path, edit: str, message: str) -> None:
    """Another RoPE loaded silently, another patch size was resampled to 16x16."""
    edits = ({"rope_embed.periods": official()["rope_embed.periods"] * 10} if edit == "rope"
             else {"patch_embed.proj.weight": torch.randn(64, 3, 14, 14)})
    with pytest.raises(ValueError, match=message):
        load_face_parser(original_last_ckpt(tmp_path / "last.ckpt", **edits))


# --------------------------------------------------------------------------- 2, 3: DINOv3 files


def swiglu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The file as a DINOv3 "plus" variant: SwiGLU MLPs (Meta's ``mlp.w1/w2/w3``)."""
    out = {k: v for k, v in state.items() if ".mlp." not in k}
    blocks = {k.split(".")[1] for k in state if k.startswith("blocks.")}
    width, hidden = state["cls_token"].shape[-1], 96
    for i in blocks:
        for name, shape in (("w1", (hidden, width)), ("w2", (hidden, width)),
                            ("w3", (width, hidden))):
            out[f"blocks.{i}.mlp.{name}.weight"] = torch.randn(shape)
            out[f"blocks.{i}.mlp.{name}.bias"] = torch.zeros(shape[0])
    return out


def test_a_swiglu_plus_variant_is_named_not_called_damaged(tmp_path: Path) -> None:
    torch.save(swiglu(official()), tmp_path / "dinov3_vits16plus.pth")
    with pytest.raises(ValueError, match=r"SwiGLU MLP\), a variant faceparse does not "
                                         r"support") as refused:
        load_dinov3_weights(tiny_timm_vit(), tmp_path / "dinov3_vits16plus.pth")
    assert "damaged" not in str(refused.value)


def test_a_real_size_plus_variant_is_described_by_its_name() -> None:
    state = {"cls_token": torch.empty(1, 1, 384, device="meta"),
             **{f"blocks.{i}.mlp.w1.weight": torch.empty(1, device="meta") for i in range(12)}}
    assert describe_vit(state) == "ViT-S+/16 (width 384, 12 blocks, SwiGLU MLP)"


def test_a_hugging_face_dinov3_file_is_named_as_such(tmp_path: Path) -> None:
    width = 64
    state = {"embeddings.cls_token": torch.zeros(1, 1, width),
             "embeddings.mask_token": torch.zeros(1, 1, width),
             "embeddings.register_tokens": torch.zeros(1, 4, width),
             "embeddings.patch_embeddings.weight": torch.zeros(width, 3, 16, 16),
             "layer.0.attention.q_proj.weight": torch.zeros(width, width),
             "norm.weight": torch.ones(width)}
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"Hugging Face transformers' layout .*use Meta's "
                                         r"official .*or timm's converted DINOv3 weights"):
        load_dinov3_weights(tiny_timm_vit(), tmp_path / "model.safetensors")


# --------------------------------------------------------------------------- 4: VGG features


def vgg11_features() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["A"], True)


def test_a_vgg_features_only_file_loads(tmp_path: Path) -> None:
    """``torch.save(vgg.features.state_dict())``: keys ``0.weight``... are ours already."""
    reference = vgg11_features().state_dict()
    torch.save(reference, tmp_path / "features.pth")
    encoder = VggEncoder("vgg11_bn", weights=tmp_path / "features.pth")
    for key, value in encoder.layers.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_a_file_without_vgg_keys_says_so(tmp_path: Path) -> None:
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"other\.pth has no features\.\* keys: not a "
                                         r"torchvision VGG file \(its first keys are "
                                         r"conv\.weight\)"):
        VggEncoder("vgg11_bn", weights=tmp_path / "other.pth")


# --------------------------------------------------------------------------- 5: key prefixes


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module.net."])
def test_a_wrappers_key_prefix_is_one_error_line_naming_it(
        ckpt: Path, tmp_path: Path, prefix: str, caplog) -> None:
    saved = torch.load(ckpt, weights_only=False)
    saved["state_dict"] = {f"net.{prefix}{k.removeprefix('net.')}": v
                           for k, v in saved["state_dict"].items()}
    torch.save(saved, tmp_path / "wrapped.ckpt")
    with caplog.at_level(logging.DEBUG), pytest.raises(ValueError) as refused:
        load_face_parser(tmp_path / "wrapped.ckpt")
    message = str(refused.value)
    assert f"carry the prefix {prefix!r}" in message and f"strip {prefix!r}" in message
    assert "\n" not in message
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []  # the command logs the refusal: its one [ERROR] line
    assert any("missing keys" in r.getMessage() for r in caplog.records)  # at DEBUG


def test_wrapper_prefix_only_when_every_unexpected_key_maps() -> None:
    missing = ["a.weight", "b.weight"]
    assert wrapper_prefix(missing, ["module.a.weight", "module.b.weight"]) == "module."
    assert wrapper_prefix(missing, ["module.a.weight", "other.b.weight"]) is None
    assert wrapper_prefix(missing, ["module.c.weight"]) is None
    assert wrapper_prefix([], ["module.a.weight"]) is None


# --------------------------------------------------------------------------- 7: folders


def test_a_folder_for_a_weight_file_says_to_give_the_file(ckpt: Path, tmp_path: Path) -> None:
    """It was "not found at <folder>: put the file there", false for the folder holding it;
    the file named is the one the option expects, not any file in the folder."""
    vit, vgg = "dinov3_vits16_pretrain_lvd1689m-abc.pth", "vgg11_bn-6002323d.pth"
    for name in (vit, vgg, "last.ckpt"):
        (tmp_path / name).write_bytes(b"")
    for build, name in ((partial(DinoVitEncoder, "small", weights=tmp_path), vit),
                        (partial(VggEncoder, "vgg11_bn", weights=tmp_path), vgg),
                        (partial(load_face_parser, ckpt, vit_weights=tmp_path), vit)):
        with pytest.raises(FileNotFoundError) as refused:
            build()
        message = str(refused.value)
        assert f"{tmp_path} is a folder (it holds {name}): give " in message, message
        assert f"itself with {'cnn' if name == vgg else 'vit'}" in message, message
        assert f"e.g. {tmp_path / name}" in message and "put the file there" not in message
