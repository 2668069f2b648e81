"""``export`` and ``export_decoder`` check ``out=`` and ``ckpt=`` before their work.

Never over the DINOv3 file they read or the one the decoder-only output needs beside it
(licensed, 1.2 GB, half the model), never into a folder or an unwritable place; a run
folder is a ``ckpt=``; a decoder-only file is not exported again. The ViT is the 64-wide
DINOv3 of tests/fixtures/dinov3, so a "full" checkpoint is a few MB.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import timm
import torch
from hydra.utils import instantiate

from faceparse.checkpoints import checkpoint_metadata, export_decoder_only, read_checkpoint
from faceparse.export import export
from faceparse.labels import get_scheme
from faceparse.models import dinov3 as dinov3_module
from faceparse.writable import output_file, replacing, write_errors_naming

pytestmark = pytest.mark.usefixtures("torch_single_thread")
OFFICIAL = Path(__file__).parent / "fixtures" / "dinov3" / "dinov3_tiny_official.pth"
VIT_FILE = "dinov3_vits16_pretrain_lvd1689m-tiny0000.pth"
CREATE_MODEL = timm.create_model


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module", autouse=True)
def tiny_vit():
    """Every DINOv3 size builds the fixture's 64-wide ViT (in this process)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dinov3_module.timm, "create_model",
                   partial(CREATE_MODEL, embed_dim=64, depth=4, num_heads=4))
        yield


@pytest.fixture(scope="module")
def full(compose, tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full checkpoint whose frozen ViT was loaded from ``VIT_FILE`` beside it."""
    folder = tmp_path_factory.mktemp("full")
    shutil.copy(OFFICIAL, folder / VIT_FILE)
    cfg = compose([*tiny, f"vit.weights={folder / VIT_FILE}", "vit.random_init=false"])
    torch.manual_seed(0)
    net = instantiate(cfg.model.net)
    meta = checkpoint_metadata(net.config, get_scheme("ourface"), 32)
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "faceparse": meta}, folder / "full.ckpt")
    return folder / "full.ckpt"


@pytest.fixture(scope="module")
def decoder_only(full: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Its decoder-only export, with the DINOv3 file beside it."""
    folder = tmp_path_factory.mktemp("dec")
    export_decoder_only(full, folder / "dec.ckpt")
    shutil.copy(OFFICIAL, folder / VIT_FILE)
    return folder / "dec.ckpt"


# --------------------------------------------------------------------------- the DINOv3 file


def test_export_decoder_refuses_to_replace_the_dinov3_file_it_was_loaded_from(
        full: Path) -> None:
    weights = full.parent / VIT_FILE
    before = sha256(weights)
    with pytest.raises(ValueError, match=f"out={weights} is the DINOv3 weight file"):
        export_decoder_only(full, weights)
    assert sha256(weights) == before


def test_export_decoder_refuses_an_out_named_as_the_file_it_needs_beside_it(
        full: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs beside it"):
        export_decoder_only(full, tmp_path / VIT_FILE)
    assert not (tmp_path / VIT_FILE).exists()


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_export_decoder_command_refuses_the_dinov3_file_in_one_line(full: Path,
                                                                   tmp_path: Path) -> None:
    weights = full.parent / VIT_FILE
    before = sha256(weights)
    result = subprocess.run(
        [sys.executable, "-m", "faceparse.export_decoder", f"ckpt={full}", f"out={weights}",
         f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(errors) == 1 and str(weights) in errors[0]
    assert sha256(weights) == before


@pytest.mark.parametrize("given", [False, True], ids=["beside it", "vit_weights="])
def test_export_refuses_to_replace_the_dinov3_file_it_reads(
        compose, decoder_only: Path, given: bool) -> None:
    weights = decoder_only.parent / VIT_FILE
    before = sha256(weights)
    overrides = [f"ckpt={decoder_only}", f"out={weights}", "format=torchscript"]
    cfg = compose([*overrides, *([f"vit_weights={weights}"] if given else [])],
                  config="export")
    with pytest.raises(ValueError, match=f"out={weights} is the DINOv3 weight file the export "
                                         f"reads"):
        export(cfg)
    assert sha256(weights) == before


# --------------------------------------------------------------------------- out= and ckpt=


def test_export_decoder_refuses_a_folder_before_reading(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"out={tmp_path} is a folder"):
        export_decoder_only(tmp_path / "missing.ckpt", tmp_path)


def test_an_unwritable_folder_is_refused_in_one_line(full: Path, tmp_path: Path,
                                                     monkeypatch) -> None:
    monkeypatch.setattr("faceparse.writable.os.access", lambda path, mode: False)
    with pytest.raises(ValueError, match="cannot write there .*permission denied"):
        output_file(tmp_path / "sub" / "model.onnx", "out")
    with pytest.raises(ValueError, match=f"out={tmp_path / 'dec.ckpt'}: cannot write there"):
        export_decoder_only(full, tmp_path / "dec.ckpt")
    assert list(tmp_path.iterdir()) == [tmp_path / "sub"]  # no .partial, no output


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_place_that_takes_no_file_is_refused_before_the_work(full: Path,
                                                               tmp_path: Path) -> None:
    """/proc takes no new file, even for root (whom ``os.access`` lets write anywhere)."""
    with pytest.raises(ValueError, match="out=/proc/model.onnx: cannot write there"):
        output_file("/proc/model.onnx", "out")
    result = subprocess.run(
        [sys.executable, "-m", "faceparse.export_decoder", f"ckpt={full}",
         "out=/proc/dec.ckpt", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: out=/proc/dec.ckpt: cannot write there (/proc: " in result.stderr


def test_a_long_legal_out_name_is_written(tmp_path: Path) -> None:
    """The probe and partial files' names stay under the 255-byte limit the name meets."""
    out = tmp_path / f"{'m' * 245}.onnx"
    assert output_file(out, "out") == out
    with replacing(out) as partial:
        partial.write_bytes(b"model")
    assert out.read_bytes() == b"model" and list(tmp_path.iterdir()) == [out]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_replacing_names_the_file_a_place_cannot_hold() -> None:
    with pytest.raises(OSError, match="cannot write /proc/out.bin: "), replacing(
            "/proc/out.bin"):
        pytest.fail("the block must not run")


def zip_writer_fails(*args, **kwargs) -> None:
    """What torch's zip writer raises on a full disk (its words, no file named)."""
    raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1536 vs "
                       "1434\nPytorchStreamWriter failed writing file data/0: file write failed")


def test_a_write_that_fails_midway_is_one_line_naming_the_output(
        compose, full: Path, decoder_only: Path, tmp_path: Path, monkeypatch) -> None:
    """A full disk after the checks: the file named, nothing partial left, no traceback."""
    monkeypatch.setattr("faceparse.checkpoints.export.torch.save", zip_writer_fails)
    out = tmp_path / "dec.ckpt"
    with pytest.raises(OSError, match=f"cannot write {out}: .*file write failed$"):
        export_decoder_only(full, out)
    monkeypatch.setattr("faceparse.deploy.exporters.torch.jit.save", zip_writer_fails)
    cfg = compose([f"ckpt={decoder_only}", f"out={tmp_path / 'model.pt'}",
                   "format=torchscript"], config="export")
    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'model.pt'}: "):
        export(cfg)
    assert list(tmp_path.iterdir()) == []  # no output, no .partial


def test_other_errors_pass_through_write_errors_naming(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="^a bug$"), write_errors_naming(tmp_path / "x"):
        raise RuntimeError("a bug")


def test_export_decoder_takes_a_run_folder(full: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(full, run / "checkpoints" / "epoch_000.ckpt")
    report = export_decoder_only(run, tmp_path / "dec.ckpt")
    assert report["source"] == str(run / "checkpoints" / "epoch_000.ckpt")
    assert read_checkpoint(tmp_path / "dec.ckpt").metadata["decoder_only"]["external"]
    with pytest.raises(ValueError, match="is a folder, not a checkpoint file"):
        read_checkpoint(run)


def test_a_decoder_only_file_is_not_exported_again(decoder_only: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"dec.ckpt is already decoder-only \\(its ViT "
                                         f"weights are in {VIT_FILE}\\)"):
        export_decoder_only(decoder_only, tmp_path / "dec2.ckpt")
