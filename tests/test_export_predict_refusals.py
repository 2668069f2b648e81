"""One-line refusals of export, export_decoder and predict for inputs that gave tracebacks
or were quietly ignored: ``parity=null``, path options typed as numbers or null, a text
file starting with a pickle memo opcode, ONNX on a GPU machine whose onnxruntime is
CPU-only, and ONNX options (precision, a static export's other size) it cannot honour."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import onnxruntime
import pytest
import torch
from hydra.utils import instantiate
from predict_helpers import predict_config, refusal, write_image

from faceparse.deploy import export_net
from faceparse.export import export
from faceparse.export_decoder import export_decoder
from faceparse.inference import Parser, load_model
from faceparse.labels import get_scheme
from faceparse.option_values import path_value
from faceparse.safe_load import NotACheckpointError, safe_load
from faceparse.writable import check_output_dir, output_file

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def static_onnx(compose, tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny net exported for 32 px inputs only (not dynamic)."""
    torch.manual_seed(0)
    net = instantiate(compose(tiny).model.net).eval()
    out = tmp_path_factory.mktemp("onnx") / "static.onnx"
    export_net(net, out, "onnx", get_scheme("ourface"), 32, dynamic=False)
    return out


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    write_image(tmp_path / "in" / "a.png", (20, 24))
    return tmp_path / "in"


# --------------------------------------------------------------------------- 4: parity=


@pytest.mark.parametrize("value", ["null", "5"])
def test_export_refuses_parity_that_is_no_group(compose, ckpt: Path, tmp_path: Path,
                                                value: str) -> None:
    cfg = compose([f"ckpt={ckpt}", f"out={tmp_path / 'a.onnx'}", f"parity={value}"],
                  config="export")
    with pytest.raises(ValueError, match=rf"^parity={value}: parity takes parity\.images=, "
                                         r"parity\.atol= and parity\.min_agreement="):
        export(cfg)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- 5: path options


def test_a_number_is_a_path_name_and_null_is_refused_by_name(tmp_path: Path,
                                                             monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert path_value("out", 123) == Path("123") and output_file(123, "out") == Path("123")
    with pytest.raises(ValueError, match=r"^out=null: give a file name$"):
        output_file(None, "out")
    with pytest.raises(ValueError, match=r"^out=1\.5: give a file name \(for a file of that "
                                         r"name, quote it: out='1\.5'\)$"):
        path_value("out", 1.5)
    with pytest.raises(ValueError, match=r"^out=true: give a file name"):
        path_value("out", True)


@pytest.mark.parametrize(("overrides", "error", "message"), [
    (["out=null"], ValueError, r"^out=null: give a file name$"),
    (["ckpt=null"], ValueError, r"^ckpt=null: give a checkpoint file or a training run folder"),
    (["ckpt=123"], FileNotFoundError, r"^ckpt=123: no such file or folder"),
    (["vit_weights=1.5"], ValueError, r"^vit_weights=1\.5: give a DINOv3 weight file"),
], ids=["out=null", "ckpt=null", "ckpt=123", "vit_weights=1.5"])
def test_export_names_a_path_option_typed_as_null_or_a_number(
        compose, ckpt: Path, tmp_path: Path, overrides: list[str], error: type,
        message: str) -> None:
    cfg = compose([f"ckpt={ckpt}", f"out={tmp_path / 'a.onnx'}", *overrides],
                  config="export")
    with pytest.raises(error, match=message):
        export(cfg)


def test_export_decoder_names_null_and_takes_a_number_as_a_file_name(
        compose, ckpt: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"^out=null: give a file name$"):
        export_decoder(compose([f"ckpt={ckpt}", "out=null"], config="export_decoder"))
    with pytest.raises(ValueError, match=r"^ckpt=null: give a checkpoint file"):
        export_decoder(compose(["ckpt=null", "out=x.ckpt"], config="export_decoder"))
    # out=123 is the file "123": the tiny checkpoint's own ViT is what stops this export
    with pytest.raises(ValueError, match="was not loaded from a file"):
        export_decoder(compose([f"ckpt={ckpt}", "out=123"], config="export_decoder"))
    assert not (tmp_path / "123").exists()


@pytest.mark.parametrize(("overrides", "message"), [
    (["ckpt=123"], r"^ckpt=123: no such file or folder"),
    (["ckpt=null"], r"^ckpt=null: give a checkpoint file or a training run folder"),
    (["vit_weights=1.5"], r"^vit_weights=1\.5: give a DINOv3 weight file"),
], ids=["ckpt=123", "ckpt=null", "vit_weights=1.5"])
def test_predict_names_a_path_option_typed_as_null_or_a_number(
        compose, ckpt: Path, photos: Path, tmp_path: Path, caplog, overrides: list[str],
        message: str) -> None:
    out = tmp_path / "masks"
    cfg = predict_config(compose, tmp_path, ckpt, f"input={photos}", f"output_dir={out}",
                         *overrides)
    assert re.match(message, refusal(cfg, caplog))
    assert not out.exists()


def test_predict_names_an_output_dir_typed_as_null(compose, ckpt: Path, photos: Path,
                                                    tmp_path: Path, caplog) -> None:
    cfg = predict_config(compose, tmp_path, ckpt, f"input={photos}", "output_dir=null")
    assert refusal(cfg, caplog).startswith("output_dir=null: give a folder for the outputs")


# --------------------------------------------------------------------------- 6: h / j files


@pytest.mark.parametrize("contents", [b"hello\n", b"h\x00\x00", b"j\x01\x00\x00\x00"],
                         ids=["hello", "BINGET", "LONG_BINGET"])
def test_a_file_starting_with_a_memo_opcode_is_not_a_checkpoint(tmp_path: Path,
                                                                contents: bytes) -> None:
    path = tmp_path / "text.ckpt"
    path.write_bytes(contents)
    for trust_pickle in (False, True):
        with pytest.raises(NotACheckpointError, match=f"^{path} is not a PyTorch checkpoint "
                                                      rf"\(corrupt, or another file type"):
            safe_load(path, trust_pickle)


def test_predict_names_a_text_file_given_as_ckpt(compose, photos: Path, tmp_path: Path,
                                                 caplog) -> None:
    text = tmp_path / "text.ckpt"
    text.write_text("hello\n")
    cfg = predict_config(compose, tmp_path, text, f"input={photos}",
                         f"output_dir={tmp_path / 'masks'}")
    assert refusal(cfg, caplog).startswith(f"{text} is not a PyTorch checkpoint (corrupt, or "
                                           f"another file type")


# --------------------------------------------------------------------------- 7: ONNX on a GPU box


@pytest.fixture
def gpu_without_onnx_cuda(monkeypatch) -> None:
    """torch sees a GPU; onnxruntime is the CPU-only build faceparse[export] installs."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CPUExecutionProvider"])


@pytest.mark.usefixtures("gpu_without_onnx_cuda")
def test_device_auto_runs_onnx_on_the_cpu_provider_when_cuda_has_none(static_onnx: Path,
                                                                      caplog) -> None:
    with caplog.at_level(logging.INFO, logger="faceparse.inference.model"):
        model = load_model(static_onnx, device="auto")
    assert model.net.session.get_providers() == ["CPUExecutionProvider"]
    assert model.device == torch.device("cpu")
    said = [r.getMessage() for r in caplog.records if r.name == "faceparse.inference.model"]
    assert said == ["static.onnx runs on onnxruntime's CPUExecutionProvider: this onnxruntime "
                    "has no CUDAExecutionProvider (pip install onnxruntime-gpu to run it on "
                    "the GPU)"]
    assert model.net(torch.zeros(1, 3, 32, 32)).shape == (1, 11, 32, 32)


@pytest.mark.usefixtures("gpu_without_onnx_cuda")
def test_device_cuda_without_the_provider_is_refused_suggesting_cpu(static_onnx: Path
                                                                    ) -> None:
    with pytest.raises(ValueError, match=r"^device=cuda: this onnxruntime has no "
                                         r"CUDAExecutionProvider: use device=cpu, or pip "
                                         r"install onnxruntime-gpu"):
        load_model(static_onnx, device="cuda")


# --------------------------------------------------------------------------- 8: ONNX options


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_an_onnx_model_refuses_a_precision_it_would_ignore(static_onnx: Path,
                                                           precision: str) -> None:
    model = load_model(static_onnx, device="cpu")
    with pytest.raises(ValueError, match=f"^precision={precision}: {static_onnx} is an ONNX "
                                         f"model, run by onnxruntime in fp32"):
        Parser(model, precision=precision)
    for fine in ("auto", "32-true"):
        assert Parser(model, precision=fine).precision == "32-true"


@pytest.mark.parametrize(("override", "message"), [
    ("precision=bf16-mixed", "precision=bf16-mixed: {onnx} is an ONNX model, run by "
                             "onnxruntime in fp32; drop precision=, or pass the .ckpt it was "
                             "exported from"),
    ("image_size=64", "image_size=64: static.onnx was exported for input [1, 3, 32, 32] "
                      "only: drop image_size=, or export with dynamic=true for other sizes"),
], ids=["precision", "image_size"])
def test_predict_refuses_onnx_options_before_writing_anything(
        compose, static_onnx: Path, photos: Path, tmp_path: Path, caplog, override: str,
        message: str) -> None:
    out = tmp_path / "masks"
    cfg = predict_config(compose, tmp_path, static_onnx, f"input={photos}",
                         f"output_dir={out}", override)
    assert refusal(cfg, caplog) == message.format(onnx=static_onnx)
    assert not out.exists()  # refused up front, not at the first batch


def test_an_output_path_under_home_is_expanded(tmp_path: Path, monkeypatch) -> None:
    """out='~/model.onnx' writes into the home folder, not a folder named ~ here."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert output_file("~/model.onnx", "out") == tmp_path / "home" / "model.onnx"
    assert check_output_dir("~/masks", "output_dir") == tmp_path / "home" / "masks"
    assert not (tmp_path / "~").exists()
