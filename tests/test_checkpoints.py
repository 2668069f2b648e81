"""Checkpoints: metadata, decoder-only export/import, the original project's files and
exact resume (safe loading: tests/test_safe_load.py).

ViTs are the 64-wide, 4-block DINOv3 of tests/fixtures/dinov3 (in the official format),
so every file here is small; checkpoints are built from our own modules' random weights.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import timm
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from faceparse.checkpoints import (
    META_KEY,
    CheckpointKind,
    build_net,
    export_decoder_only,
    load_face_parser,
    load_net_weights,
    read_checkpoint,
    start_from,
)
from faceparse.checkpoints import original as original_project
from faceparse.export_decoder import export_decoder
from faceparse.labels import get_scheme
from faceparse.models import dinov3 as dinov3_module
from faceparse.train import train

OFFICIAL = Path(__file__).parent / "fixtures" / "dinov3" / "dinov3_tiny_official.pth"
VIT_FILE = "dinov3_vitl16_pretrain_lvd1689m-tiny0000.pth"
QUIET = ["callbacks.progress_bar=null", "callbacks.prediction_images=null"]

pytestmark = pytest.mark.usefixtures("torch_single_thread")
CREATE_MODEL = timm.create_model  # the real one, before the tiny_vit fixture patches it


def _tiny_create(create, name: str, **kwargs):
    return create(name, embed_dim=64, depth=4, num_heads=4, **kwargs)


@pytest.fixture(scope="module", autouse=True)
def tiny_vit():
    """Every DINOv3 size builds the fixture's ViT; its width names the original's ViT."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dinov3_module.timm, "create_model", partial(_tiny_create, CREATE_MODEL))
        mp.setattr(original_project, "VIT_SIZES", {64: "large"})
        yield mp


@pytest.fixture(scope="module")
def compose_tiny(compose, tiny):
    def _compose(out: Path, overrides: list[str]):
        return compose([*tiny, *QUIET, *overrides], output_dir=out)

    return _compose


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, compose_tiny) -> Path:
    """A real run's ``last.ckpt``, its ViT loaded from an official-format file."""
    out = tmp_path_factory.mktemp("trained")
    shutil.copy(OFFICIAL, out / VIT_FILE)
    train(compose_tiny(out, [f"vit.weights={out / VIT_FILE}", "vit.random_init=false",
                             "test=false"]))
    return out / "checkpoints" / "last.ckpt"


def export_command(*args: str) -> subprocess.CompletedProcess:
    """``python -m faceparse.export_decoder``, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "faceparse.export_decoder", *args],
                          capture_output=True, text=True, timeout=300)


def images(seed: int = 0, size: tuple[int, int] = (32, 48)) -> torch.Tensor:
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))


def logits(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(x)


# --------------------------------------------------------------------------- our checkpoints


def test_checkpoint_carries_config_and_labels(trained: Path) -> None:
    ckpt = torch.load(trained, weights_only=True)  # plain data: no allow-list needed
    meta = ckpt[META_KEY]
    assert meta["labels"] == "ourface" and len(meta["class_names"]) == 11
    assert meta["model"]["_target_"] == "faceparse.models.FaceParser"
    assert meta["model"]["encoder"]["vit"]["weights"].endswith(VIT_FILE)
    assert "rng_states" in ckpt
    assert read_checkpoint(trained).kind is CheckpointKind.RUN


def test_load_face_parser_from_the_path_alone(trained: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere.ckpt"  # the ViT file is not needed: the weights are inside
    shutil.copy(trained, moved)
    net, scheme = load_face_parser(moved)
    state = torch.load(trained, weights_only=True)["state_dict"]
    assert scheme.name == "ourface" and not net.training
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[f"net.{key}"]), key


def test_decoder_only_export_equals_full_checkpoint(trained: Path, tmp_path: Path,
                                                    compose) -> None:
    out = tmp_path / "decoder.ckpt"
    report = export_decoder(compose([f"ckpt={trained}", f"out={out}"], config="export_decoder"))
    assert read_checkpoint(out).kind is CheckpointKind.WEIGHTS
    full = torch.load(trained, weights_only=True)["state_dict"]
    vit_keys = [k for k in full if k.startswith("net.encoder.vit.model.")]
    vit_bytes = sum(full[k].numel() * full[k].element_size() for k in vit_keys)
    assert report["removed_keys"] == len(vit_keys)
    assert report["removed_modules"] == ["net.encoder.vit.model"]
    assert report["needs_beside_it"] == [VIT_FILE]
    assert "optimizer_states" in report["dropped_entries"]
    assert report["size_before"] - report["size_after"] >= vit_bytes

    with pytest.raises(FileNotFoundError, match=VIT_FILE):
        load_face_parser(out)
    shutil.copy(OFFICIAL, tmp_path / VIT_FILE)
    exported, scheme = load_face_parser(out)
    reference, _ = load_face_parser(trained)
    x = images()
    assert torch.equal(logits(exported, x), logits(reference, x))
    assert scheme.name == "ourface"


def test_decoder_only_refuses_another_dinov3_file(trained: Path, tmp_path: Path) -> None:
    export_decoder_only(trained, tmp_path / "decoder.ckpt")
    other = torch.load(OFFICIAL, weights_only=True)
    other["norm.weight"] = other["norm.weight"] + 1e-3
    torch.save(other, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not the DINOv3 file"):
        load_face_parser(tmp_path / "decoder.ckpt", vit_weights=tmp_path / "other.pth")


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_the_decoder_only_export_of_a_bf16_run_loads_with_its_dinov3_file(
    tmp_path: Path, compose, compose_tiny, tiny
) -> None:
    """bf16-mixed training stores the frozen ViT in bf16, so the checkpoint holds its
    weights rounded: the export records that, and the DINOv3 file it was trained with gives
    exactly the full checkpoint's outputs (it was refused as another file before)."""
    shutil.copy(OFFICIAL, tmp_path / VIT_FILE)
    vit = [f"vit.weights={tmp_path / VIT_FILE}", "vit.random_init=false"]
    train(compose_tiny(tmp_path / "run", [*vit, "test=false", "trainer.precision=bf16-mixed",
                                          "fast_path.frozen_vit_bf16=true"]))
    full = tmp_path / "run" / "checkpoints" / "last.ckpt"
    export_decoder_only(full, tmp_path / "decoder.ckpt")
    spec = torch.load(tmp_path / "decoder.ckpt", weights_only=True)[META_KEY][
        "decoder_only"]["external"]["encoder.vit"]
    assert spec["rounded_to"] == "bfloat16"
    reference, _ = load_face_parser(full)
    x = images()
    loaded, _ = load_face_parser(tmp_path / "decoder.ckpt")  # the DINOv3 file beside it
    assert torch.equal(logits(loaded, x), logits(reference, x))
    started = instantiate(compose([*tiny, *vit]).model.net)  # a run started from it
    load_net_weights(started, tmp_path / "decoder.ckpt", get_scheme("ourface"))
    assert torch.equal(logits(started, x), logits(reference, x))
    other = torch.load(OFFICIAL, weights_only=True)
    other["norm.weight"] = other["norm.weight"] + 0.25  # still another file when rounded
    torch.save(other, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not the DINOv3 file"):
        load_face_parser(tmp_path / "decoder.ckpt", vit_weights=tmp_path / "other.pth")


def test_a_decoder_only_file_of_another_vit_is_refused_by_name(trained: Path,
                                                              tmp_path: Path) -> None:
    export_decoder_only(trained, tmp_path / "decoder.ckpt")
    ckpt = torch.load(tmp_path / "decoder.ckpt", weights_only=True)
    ckpt[META_KEY]["decoder_only"]["external"]["encoder.vit"]["keys"].append(
        "encoder.vit.model.blocks.23.mlp.fc1.weight")  # as a ViT-L's export would list
    torch.save(ckpt, tmp_path / "large.ckpt")
    with pytest.raises(ValueError, match=r"large.ckpt was trained with a ViT that has "
                                         r"encoder.vit.model.blocks.23.mlp.fc1.weight"):
        load_face_parser(tmp_path / "large.ckpt", vit_weights=OFFICIAL)


def test_starting_from_a_decoder_only_file_needs_its_dinov3_file(
    trained: Path, tmp_path: Path, compose, tiny
) -> None:
    """The frozen ViT a decoder-only file leaves out must be the one it was trained with:
    a random ViT or another DINOv3 file is refused, the right file gives the same net."""
    export_decoder_only(trained, tmp_path / "decoder.ckpt")
    other = torch.load(OFFICIAL, weights_only=True)
    other["norm.weight"] = other["norm.weight"] + 1e-3
    torch.save(other, tmp_path / "other.pth")

    def net(*overrides: str) -> torch.nn.Module:
        return instantiate(compose([*tiny, *overrides]).model.net)

    scheme = get_scheme("ourface")
    with pytest.raises(ValueError, match="vit.weights=<the DINOv3 file"):
        load_net_weights(net(), tmp_path / "decoder.ckpt", scheme)
    with pytest.raises(ValueError, match="not the DINOv3 file"):
        load_net_weights(net(f"vit.weights={tmp_path / 'other.pth'}"), tmp_path / "decoder.ckpt",
                         scheme)
    started = net(f"vit.weights={OFFICIAL}")
    load_net_weights(started, tmp_path / "decoder.ckpt", scheme)
    reference, _ = load_face_parser(trained)
    x = images()
    assert torch.equal(logits(started, x), logits(reference, x))


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_a_decoder_only_file_of_a_finetune_blocks_run_starts_a_run_with_its_tuned_blocks(
    tmp_path: Path, compose, compose_tiny, tiny
) -> None:
    """The export leaves out only the frozen blocks; the tuned ones stay in the file and
    must come from it (not from the DINOv3 file) when a run starts from it."""
    shutil.copy(OFFICIAL, tmp_path / VIT_FILE)
    tuned = ["vit.finetune_blocks=1", f"vit.weights={tmp_path / VIT_FILE}",
             "vit.random_init=false"]
    train(compose_tiny(tmp_path / "run", [*tuned, "test=false"]))
    full = tmp_path / "run" / "checkpoints" / "last.ckpt"
    report = export_decoder_only(full, tmp_path / "decoder.ckpt")
    kept = torch.load(tmp_path / "decoder.ckpt", weights_only=True)["state_dict"]
    assert any(k.startswith("net.encoder.vit.model.blocks.3.") for k in kept)  # tuned: kept
    assert not any(k.startswith("net.encoder.vit.model.blocks.0.") for k in kept)
    assert report["removed_keys"] > 0
    started = instantiate(compose([*tiny, *tuned]).model.net)
    load_net_weights(started, tmp_path / "decoder.ckpt", get_scheme("ourface"))
    reference, _ = load_face_parser(full)
    x = images()
    assert torch.equal(logits(started, x), logits(reference, x))
    # as a user starts from it: a new run with ckpt_path= the decoder-only file
    train(compose_tiny(tmp_path / "again", [*tuned, f"ckpt_path={tmp_path / 'decoder.ckpt'}",
                                            "test=false"]))
    assert (tmp_path / "again" / "checkpoints" / "last.ckpt").is_file()


def test_starting_from_a_checkpoint_of_another_config_with_the_same_shapes_warns(
    trained: Path, compose, tiny, caplog
) -> None:
    """``vit.layers=[2]`` keeps every shape of ``[-1]``: the weights load, the user is told;
    another weights file (where the ViT came from) is no difference."""
    def net(*overrides: str) -> torch.nn.Module:
        return instantiate(compose([*tiny, f"vit.weights={OFFICIAL}", "vit.random_init=false",
                                    *overrides]).model.net)

    with caplog.at_level(logging.WARNING, logger="faceparse.checkpoints.resume"):
        assert start_from(trained, net(), get_scheme("ourface")).path == str(trained)
    assert "configured otherwise" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="faceparse.checkpoints.resume"):
        start_from(trained, net("vit.layers=[2]"), get_scheme("ourface"))
    assert f"{trained} was saved from a net configured otherwise" in caplog.text
    assert "encoder.vit.layers: [-1] -> [2]" in caplog.text


def test_config_comparison_never_resolves_a_files_interpolations(monkeypatch) -> None:
    """A checkpoint's config is compared before its trust check: a ``${oc.env:...}`` in it
    must stay text, not land resolved in the run's log."""
    from faceparse.checkpoints.format import config_differences

    monkeypatch.setenv("FACEPARSE_TEST_SECRET", "s3cret")
    saved = OmegaConf.create({"decoder": {"width": "${oc.env:FACEPARSE_TEST_SECRET}"}})
    assert config_differences(saved, {"decoder": {"width": 8}}) == [
        "decoder.width: '${oc.env:FACEPARSE_TEST_SECRET}' -> 8"]


def test_export_refuses_a_vit_not_loaded_from_a_file(tmp_path: Path, compose_tiny) -> None:
    train(compose_tiny(tmp_path, ["test=false", "callbacks.model_checkpoint.save_top_k=0"]))
    with pytest.raises(ValueError, match="not loaded from a file"):
        export_decoder_only(tmp_path / "checkpoints" / "last.ckpt", tmp_path / "d.ckpt")


def test_checkpoint_config_may_only_name_faceparse_models() -> None:
    with pytest.raises(ValueError, match="refusing"):
        build_net({"_target_": "os.system", "command": "echo pwned"})


# --------------------------------------------------------------------------- original project


def original_model(num_classes: int) -> torch.nn.Module:
    """Our parser as the original project's architecture, random weights and BN statistics."""
    torch.manual_seed(num_classes)
    shapes = {"decoder.adapt_scale16.conv.weight": torch.empty(512, 64, 1, 1),
              "decoder.adapt_scale8.conv.weight": torch.empty(256, 512, 1, 1),
              "decoder.arm16.attention.1.weight": torch.empty(0),
              "decoder.final_conv.2.weight": torch.empty(num_classes, 64, 1, 1)}
    net = build_net(original_project.original_net_config(shapes), {"encoder.vit": str(OFFICIAL)})
    with torch.no_grad():
        for name, buffer in net.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    return net.eval()


def original_checkpoint(net: torch.nn.Module, path: Path, with_vit: bool) -> None:
    """A Lightning file in the original project's key layout (decoder.ckpt / last.ckpt)."""
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("encoder.vit.")}
    if with_vit:  # its last.ckpt: the ViT under encoder.dinov3 in Meta's names
        official = torch.load(OFFICIAL, weights_only=True)
        state.update({f"encoder.dinov3.{k}": v for k, v in official.items()})
    hparams = OmegaConf.create({"num_classes": net.num_classes, "lr": [1e-4]})
    torch.save({"state_dict": state, "epoch": 9, "global_step": 1234,
                "pytorch-lightning_version": "2.5.1", "hyper_parameters": hparams}, path)


@pytest.mark.parametrize(("num_classes", "scheme"), [(11, "ourface"), (19, "facesynthetics")])
def test_original_checkpoints_give_the_same_logits(
    num_classes: int, scheme: str, tmp_path: Path, seed_checkpoint_shapes
) -> None:
    net = original_model(num_classes)
    decoder_ckpt = tmp_path / "decoder.ckpt"
    original_checkpoint(net, decoder_ckpt, with_vit=False)
    keys = torch.load(decoder_ckpt, weights_only=False)["state_dict"]
    assert set(keys) == set(seed_checkpoint_shapes)  # exactly the original key layout
    x = images(1)
    expected = logits(net, x)

    with pytest.raises(FileNotFoundError, match="facebookresearch/dinov3"):
        load_face_parser(decoder_ckpt)
    loaded, labels = load_face_parser(decoder_ckpt, vit_weights=OFFICIAL)
    assert labels.name == scheme and labels.num_classes == num_classes
    assert torch.equal(logits(loaded, x), expected)

    last_ckpt = tmp_path / "last.ckpt"
    original_checkpoint(net, last_ckpt, with_vit=True)
    loaded, _ = load_face_parser(last_ckpt)
    assert torch.equal(logits(loaded, x), expected)

    target = original_model(num_classes)  # a net built from our config, other weights
    other = "ourface" if num_classes == 19 else "lapa"  # lapa: also 11 classes
    with pytest.raises(ValueError, match=f"data.labels={scheme}"):
        load_net_weights(target, decoder_ckpt, get_scheme(other))
    load_net_weights(target, decoder_ckpt, get_scheme(scheme))
    assert torch.equal(logits(target, x), expected)


@pytest.mark.parametrize(("vit", "num_classes"), [(1024, 11), (768, 19)])
def test_original_layout_builds_real_size_models(vit: int, num_classes: int,
                                                 seed_checkpoint_shapes) -> None:
    """Full-size ViT-L/11 and ViT-B/19 variants, on the meta device: every key fits."""
    shapes = dict(seed_checkpoint_shapes)
    for key, shape in shapes.items():
        if key.startswith(("decoder.aux_head", "decoder.final_conv.2")):
            shapes[key] = (num_classes, *shape[1:])
    shapes["decoder.adapt_scale16.conv.weight"] = (512, vit, 1, 1)
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    assert original_project.is_original_checkpoint(state)
    with pytest.MonkeyPatch.context() as mp, torch.device("meta"):
        mp.setattr(dinov3_module.timm, "create_model", CREATE_MODEL)
        mp.setattr(original_project, "VIT_SIZES", {768: "base", 1024: "large"})
        config = original_project.original_net_config(state)
        net = build_net(config)
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()
            if not k.startswith("encoder.vit.")}
    assert ours == shapes
    assert net.encoder.vit.model.embed_dim == vit
    assert original_project.original_scheme(num_classes).num_classes == num_classes


# --------------------------------------------------------------------------- resume


@pytest.mark.slow
def test_resume_matches_an_uninterrupted_run(tmp_path: Path, compose_tiny) -> None:
    """Two epochs straight vs one epoch, then resume from its checkpoint for the second."""
    # Full augmentation: its RNG state travels in the checkpoint (FaceDataModule.state_dict).
    common = ["trainer.max_epochs=2", "test=false", "callbacks.model_checkpoint.save_top_k=-1"]
    straight = train(compose_tiny(tmp_path / "a", common))
    first = tmp_path / "a" / "checkpoints" / "epoch_000.ckpt"
    resumed = train(compose_tiny(tmp_path / "b", [*common, f"ckpt_path={first}"]))

    a = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    # both runs end after 2 epochs of 2 steps (which of the two checkpoint callbacks wrote
    # last.ckpt last decides whether "epoch" reads 1 or 2: the same in both runs)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    assert a["global_step"] == 4 and a["epoch"] in (1, 2)
    assert b["lr_schedulers"] == a["lr_schedulers"]
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert resumed == straight

