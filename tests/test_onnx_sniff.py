"""ONNX models and PyTorch checkpoints are told apart by their bytes, not their names."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch

from faceparse.checkpoints import read_checkpoint
from faceparse.inference import load_model
from faceparse.onnx_sniff import is_onnx_model, is_torch_file

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def onnx_file(ckpt, tmp_path_factory) -> Path:
    """The tiny checkpoint's net, exported the way ``faceparse.export format=onnx`` does."""
    pytest.importorskip("onnxruntime")
    from faceparse.checkpoints import load_face_parser
    from faceparse.deploy import export_net

    net, scheme = load_face_parser(ckpt)
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_net(net.eval(), out, "onnx", scheme, 32, dynamic=True)
    return out


def test_another_exporters_onnx_model_is_recognised(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "relu.bin"
    onnx.save(helper.make_model(graph), str(path))
    assert is_onnx_model(path) and not is_torch_file(path)


@pytest.mark.parametrize("content", [b"", b"\x08", b"\x08\x08", b"\x08\x08\x08\x08",
                                     b"\x89PNG\r\n\x1a\n", b"just some text\n",
                                     b"\x08\x00\x12\x07pytorch", b"\x08\x08\x7a\x00"])
def test_other_bytes_are_not_onnx(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    assert not is_onnx_model(path)  # no, bad or unknown ir_version, or no field after it


def test_torch_files_are_not_onnx(tmp_path: Path) -> None:
    zipped, legacy = tmp_path / "zip.onnx", tmp_path / "legacy.onnx"
    torch.save({"a": torch.zeros(2)}, zipped)
    torch.save({"a": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    for path in (zipped, legacy, plain):
        assert is_torch_file(path) and not is_onnx_model(path)
    assert not is_onnx_model(tmp_path) and not is_torch_file(tmp_path / "missing")


def test_a_renamed_onnx_model_still_runs_through_onnxruntime(onnx_file: Path,
                                                            tmp_path: Path) -> None:
    renamed = shutil.copy(onnx_file, tmp_path / "model.ckpt")
    model = load_model(renamed, device="cpu")
    assert type(model.net).__name__ == "OnnxFaceParser" and model.image_size == 32
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(model.net(x), load_model(onnx_file, device="cpu").net(x))


def test_a_checkpoint_named_onnx_still_loads_as_a_checkpoint(ckpt: Path, tmp_path: Path) -> None:
    misnamed = shutil.copy(ckpt, tmp_path / "model.onnx")
    model = load_model(misnamed, device="cpu")
    assert isinstance(model.net, torch.nn.Module) and model.source == misnamed
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.net(x), load_model(ckpt, device="cpu").net(x))


def test_commands_that_need_a_checkpoint_name_an_onnx_file_as_one(onnx_file: Path) -> None:
    with pytest.raises(ValueError, match=r"model.onnx is an ONNX model .* pass the Lightning "
                                         r"checkpoint \(.ckpt\) it was exported from"):
        read_checkpoint(onnx_file)  # what eval, export and resume read
