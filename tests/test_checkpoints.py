"""Checkpoints: metadata, decoder-only export/import, the original project's files, safe
loading and exact resume.

ViTs are the 64-wide, 4-block DINOv3 of tests/fixtures/dinov3 (in the official format),
so every file here is small; checkpoints are built from our own modules' random weights.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

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
from faceparse.deploy.exporters import export_torchscript
from faceparse.export_decoder import export_decoder
from faceparse.inference.model import load_model
from faceparse.labels import get_scheme
from faceparse.models import dinov3 as dinov3_module
from faceparse.safe_load import NotACheckpointError, UnsafeCheckpointError, safe_load
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


# --------------------------------------------------------------------------- safety


def _pwned(marker: str) -> None:
    Path(marker).write_text("code ran")


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_pwned, (self.marker,))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": Payload(marker)}, path)
    for load in (safe_load, load_face_parser, read_checkpoint):
        with pytest.raises(UnsafeCheckpointError, match="_pwned") as info:
            load(path)
        assert "trust_pickle" in str(info.value)
    result = export_command(f"ckpt={path}", f"out={tmp_path / 'out.ckpt'}",
                            f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode != 0 and "UnsafeCheckpointError" in result.stderr
    assert not marker.exists() and not (tmp_path / "out.ckpt").exists()
    safe_load(path, trust_pickle=True)  # the explicit opt-in really unpickles
    assert marker.read_text() == "code ran"


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.ckpt"):
        load_face_parser(tmp_path / "absent.ckpt")
    torch.save({"state_dict": {"foo.weight": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="neither a faceparse checkpoint"):
        load_face_parser(tmp_path / "other.ckpt")



def _truncated_checkpoint(path: Path) -> None:
    torch.save({"state_dict": {"net.w": torch.zeros(4000)}}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _jpeg(path: Path) -> None:
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(path, format="JPEG")


def _torchscript(path: Path) -> None:
    """What ``faceparse.export format=torchscript`` writes, from a one-layer net."""
    net = torch.nn.Conv2d(3, 2, 1)
    net.size_multiple = 1
    export_torchscript(net, path, get_scheme("ourface"), 8, dynamic=False)


NOT_CHECKPOINTS = {  # how to write the file, what the refusal says
    "empty": (lambda p: p.write_bytes(b""), "is not a PyTorch checkpoint: the file is empty"),
    "random bytes": (lambda p: p.write_bytes(random.Random(0).randbytes(5000)),
                     "is not a PyTorch checkpoint (corrupt, or another file type"),
    "JPEG renamed": (_jpeg, "is not a PyTorch checkpoint (corrupt, or another file type"),
    "truncated": (_truncated_checkpoint,
                  "is not a PyTorch checkpoint (corrupt, or another file type"),
    "TorchScript export": (_torchscript, "is a TorchScript archive (what faceparse.export "
                                         "format=torchscript writes): TorchScript exports are "
                                         "not loaded by predict, eval"),
}


@pytest.mark.parametrize("kind", NOT_CHECKPOINTS)
@pytest.mark.parametrize("trust_pickle", [False, True])
def test_a_file_that_is_no_checkpoint_is_named_without_the_pickle_hint(
        kind: str, trust_pickle: bool, tmp_path: Path) -> None:
    """The trust_pickle hint would only talk users out of the safety check for nothing."""
    write, message = NOT_CHECKPOINTS[kind]
    path = tmp_path / "model.ckpt"
    write(path)
    readers = (safe_load, read_checkpoint, load_face_parser, start_from_a_net, load_model)
    for read in readers:  # every command reads through one of these
        with pytest.raises(NotACheckpointError) as info:
            read(path, trust_pickle=trust_pickle)
        text = str(info.value)
        assert text.startswith(f"{path} {message}"), (read, text)
        assert "trust_pickle" not in text and "weights_only" not in text and "\n" not in text
    assert isinstance(info.value, ValueError)  # the commands' one-line errors catch these


def start_from_a_net(path: Path, trust_pickle: bool) -> None:
    """``faceparse.train ckpt_path=<path>``'s reading of the file."""
    start_from(path, torch.nn.Linear(1, 1), get_scheme("ourface"), trust_pickle)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
def test_a_real_pickle_the_data_only_reader_cannot_check_keeps_the_opt_in(
        tmp_path: Path) -> None:
    """pickle_protocol=4 holds the same references in opcodes the data-only reader lacks."""
    path = tmp_path / "protocol4.ckpt"
    torch.save({"state_dict": {"net.w": torch.ones(3)}}, path, pickle_protocol=4)
    with pytest.raises(UnsafeCheckpointError, match="STACK_GLOBAL.*trust_pickle=true"):
        read_checkpoint(path)
    assert torch.equal(safe_load(path, trust_pickle=True)["state_dict"]["net.w"], torch.ones(3))


def test_eval_of_an_empty_checkpoint_is_one_error_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    result = subprocess.run([sys.executable, "-m", "faceparse.eval", f"ckpt={empty}",
                             f"hydra.run.dir={tmp_path / 'run'}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert f"error: {empty} is not a PyTorch checkpoint: the file is empty" in result.stderr
    assert "Traceback" not in result.stderr and "EOFError" not in result.stderr

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
