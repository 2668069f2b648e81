"""Checkpoint, weight and ONNX files that load while being wrong are refused by name.

Damaged zip records (CRC), quantised tensors, class names that do not match the outputs,
malformed contents and metadata, trusted pickles of code not installed here, another patch
size. Most files here are fabricated in a few bytes; only the CRC and dtype cases copy the
tiny checkpoint.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import types
import zipfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch

from faceparse.checkpoints import checkpoint_metadata, load_face_parser, read_checkpoint
from faceparse.labels import get_scheme
from faceparse.models import dinov3 as dinov3_module
from faceparse.models.weights import check_state, load_state_dict_file
from faceparse.safe_load import NotACheckpointError

pytestmark = pytest.mark.usefixtures("torch_single_thread")
OFFICIAL = Path(__file__).parent / "fixtures" / "dinov3" / "dinov3_tiny_official.pth"
CREATE_MODEL = timm.create_model


def zero_record(path: Path, out: Path) -> str:
    """Copy ``path`` to ``out`` with the bytes of its largest tensor record zeroed (the
    central directory intact, as an interrupted pre-allocating download leaves it)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename),
                   key=lambda i: i.file_size)
    names, extra = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + names + extra
    data[start:start + info.file_size] = bytes(info.file_size)
    out.write_bytes(data)
    return info.filename


def small_contents(**meta: Any) -> dict[str, Any]:
    """A data-only checkpoint in our format with one tensor and ``meta`` over its metadata."""
    base = checkpoint_metadata(None, get_scheme("ourface"), 32)
    return {"state_dict": {"net.x": torch.zeros(1)}, "faceparse": {**base, **meta}}


# --------------------------------------------------------------------------- damaged records


def test_a_checkpoint_with_a_zeroed_record_is_refused(ckpt: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "holes.ckpt"
    record = zero_record(ckpt, damaged)
    with pytest.raises(NotACheckpointError, match="fails its CRC check") as error:
        read_checkpoint(damaged)
    assert str(damaged) in str(error.value) and record in str(error.value)
    assert "get the file again" in str(error.value)


def test_a_pth_weight_file_with_a_zeroed_record_is_refused(tmp_path: Path) -> None:
    torch.save({"w": torch.randn(64, 64)}, tmp_path / "w.pth")
    record = zero_record(tmp_path / "w.pth", tmp_path / "holes.pth")
    with pytest.raises(NotACheckpointError, match=f"holes.pth is damaged: record {record}"):
        load_state_dict_file(tmp_path / "holes.pth", "VGG", "somewhere")


# --------------------------------------------------------------------------- tensor types


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.float8_e4m3fn])
def test_weights_of_another_type_are_refused_by_key_and_dtype(dtype: torch.dtype) -> None:
    own = {"w": torch.zeros(2), "bn.num_batches_tracked": torch.tensor(0)}
    state = {"w": torch.ones(2).to(dtype), "bn.num_batches_tracked": torch.tensor(0)}
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(ValueError, match=f"weights.pth holds 1 tensors of the wrong type "
                                         f"\\(w stored in {name}, expected float32\\)"):
        check_state(own, state, "weights.pth")
    with pytest.raises(ValueError, match="num_batches_tracked stored in float32"):
        check_state(own, {"w": torch.ones(2), "bn.num_batches_tracked": torch.tensor(0.0)}, "f")
    check_state(own, {"w": torch.ones(2).half(), "bn.num_batches_tracked": torch.tensor(3)},
                "f")  # a half-precision copy is fine


@pytest.fixture
def tiny_vit(monkeypatch):
    """DinoVitEncoder builds the 64-wide ViT of tests/fixtures/dinov3."""
    monkeypatch.setattr(dinov3_module.timm, "create_model",
                        partial(CREATE_MODEL, embed_dim=64, depth=4, num_heads=4))


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn])
def test_a_quantised_dinov3_file_is_refused(tiny_vit, tmp_path: Path, dtype) -> None:
    state = torch.load(OFFICIAL, weights_only=True)
    torch.save({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()},
               tmp_path / "vit_q.pth")
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(ValueError, match=f"vit_q.pth holds .* stored in {name}"):
        dinov3_module.DinoVitEncoder(size="small", weights=tmp_path / "vit_q.pth")


def test_a_checkpoint_with_integer_weights_is_refused(ckpt: Path, tmp_path: Path) -> None:
    contents = torch.load(ckpt, weights_only=True)
    key = "net.decoder.final_conv.2.weight"
    contents["state_dict"][key] = contents["state_dict"][key].round().to(torch.int8)
    torch.save(contents, tmp_path / "int8.ckpt")
    with pytest.raises(ValueError, match=r"int8.ckpt holds 1 tensors of the wrong type "
                                         r"\(decoder.final_conv.2.weight stored in int8"):
        load_face_parser(tmp_path / "int8.ckpt")


def test_a_dinov3_file_of_another_patch_size_is_refused(tiny_vit, tmp_path: Path) -> None:
    state = torch.load(OFFICIAL, weights_only=True)
    state["patch_embed.proj.weight"] = torch.randn(64, 3, 14, 14) * 0.02
    torch.save(state, tmp_path / "vit14.pth")
    with pytest.raises(ValueError, match=r"vit14.pth is a ViT with 14x14 patches, this "
                                         r"encoder's patch size is 16x16"):
        dinov3_module.DinoVitEncoder(size="small", weights=tmp_path / "vit14.pth")


# --------------------------------------------------------------------------- malformed contents


def _list_value(c: dict) -> None:
    c["state_dict"]["net.y"] = [1, 2]


def _none_value(c: dict) -> None:
    c["state_dict"]["net.y"] = None


def _int_key(c: dict) -> None:
    c["state_dict"][5] = torch.zeros(1)


def _meta_str(c: dict) -> None:
    c["faceparse"] = "x"


def _names_int(c: dict) -> None:
    c["faceparse"]["class_names"] = 5


def _names_not_str(c: dict) -> None:
    c["faceparse"]["class_names"] = ["a", 2]


def _size_text(c: dict) -> None:
    c["faceparse"]["image_size"] = "32"


def _absolute_external(c: dict) -> None:
    c["faceparse"]["decoder_only"] = {"external": {"encoder.vit": {
        "file": "/etc/passwd", "keys": [], "sha256": "0"}}}


def _few_names(c: dict) -> None:
    c["faceparse"]["model"] = {"num_classes": 11}
    c["faceparse"]["class_names"] = ["background", "skin", "eyes", "eyebrows", "ears"]


MALFORMED = {
    "a list value": (_list_value, "not named tensors"),
    "a None value": (_none_value, "not named tensors"),
    "an int key": (_int_key, "not named tensors"),
    "metadata not a dict": (_meta_str, "'faceparse' entry is a str, not a dict"),
    "class_names an int": (_names_int, "class_names is 5, not a list"),
    "class_names not str": (_names_not_str, "not a list of class names"),
    "image_size text": (_size_text, "image_size is '32'"),
    "an absolute external file": (_absolute_external, "'/etc/passwd', not the name of a file"),
    "5 names for 11 classes": (_few_names, "records 5 class names .* with 11 outputs"),
}


@pytest.mark.parametrize("edit", MALFORMED.values(), ids=list(MALFORMED))
def test_malformed_checkpoint_contents_are_refused_by_name(tmp_path: Path, edit) -> None:
    change, message = edit
    contents = small_contents()
    change(contents)
    torch.save(contents, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match=message) as error:
        read_checkpoint(tmp_path / "bad.ckpt")
    assert str(tmp_path / "bad.ckpt") in str(error.value)


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_export_refuses_malformed_contents_in_one_line(tmp_path: Path) -> None:
    contents = small_contents()
    _list_value(contents)
    torch.save(contents, tmp_path / "listval.ckpt")
    result = subprocess.run(
        [sys.executable, "-m", "faceparse.export", f"ckpt={tmp_path / 'listval.ckpt'}",
         f"out={tmp_path / 'm.onnx'}", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=120)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(errors) == 1 and "listval.ckpt is not a state dict of tensors" in errors[0]


# --------------------------------------------------------------------------- trusted pickles


@pytest.mark.parametrize("gone", ["module", "class"])
def test_a_trusted_pickle_of_code_not_installed_here_names_it(
        monkeypatch, tmp_path: Path, gone: str) -> None:
    module = types.ModuleType("fp_foreign_project")

    class Cfg:
        pass

    Cfg.__module__, Cfg.__qualname__ = module.__name__, "Cfg"
    module.Cfg = Cfg
    monkeypatch.setitem(sys.modules, module.__name__, module)
    torch.save({**small_contents(), "hyper_parameters": {"cfg": Cfg()}}, tmp_path / "fc.ckpt")
    if gone == "module":
        monkeypatch.delitem(sys.modules, module.__name__)
        expected = "module `fp_foreign_project`"
    else:
        monkeypatch.delattr(module, "Cfg")
        expected = "Cfg"
    with pytest.raises(NotACheckpointError, match="not importable here") as error:
        read_checkpoint(tmp_path / "fc.ckpt", trust_pickle=True)
    assert str(tmp_path / "fc.ckpt") in str(error.value) and expected in str(error.value)


# --------------------------------------------------------------------------- ONNX metadata


def onnx_file(path: Path, channels: int = 3, **meta: str | None) -> Path:
    """A 1x1-convolution ONNX graph with ``channels`` outputs and faceparse metadata
    (``None`` drops a key)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((channels, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["logits"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, channels, 32, 32])],
        [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    values = {"labels": "mine", "class_names": json.dumps(["a", "b", "c"][:channels]),
              "image_size": "32", "size_multiple": "16", "dynamic": "false", **meta}
    helper.set_model_props(model, {f"faceparse.{k}": v for k, v in values.items()
                                   if v is not None})
    onnx.save(model, path)
    return path


def test_the_hand_made_onnx_file_loads(tmp_path: Path) -> None:
    from faceparse.deploy import load_onnx_parser

    parser = load_onnx_parser(onnx_file(tmp_path / "ok.onnx"))
    assert parser.num_classes == 3 and parser(torch.zeros(1, 3, 32, 32)).shape[1] == 3


ONNX_EDITS = {
    "1 name for 3 channels": ({"class_names": '["a"]'}, "records 1 class names"),
    "a dict of names": ({"class_names": '{"a": 1}'}, "class_names='{\"a\": 1}'"),
    "bad JSON": ({"class_names": "[a"}, "class_names='\\[a'"),
    "no labels": ({"labels": None}, "faceparse.labels is missing"),
    "image_size text": ({"image_size": "abc"}, "faceparse.image_size='abc'"),
    "size_multiple 0": ({"size_multiple": "0"}, "faceparse.size_multiple='0'"),
}


@pytest.mark.parametrize("edit", ONNX_EDITS.values(), ids=list(ONNX_EDITS))
def test_malformed_onnx_metadata_is_one_error_naming_the_file(tmp_path: Path, edit) -> None:
    from faceparse.deploy import load_onnx_parser

    meta, message = edit
    path = onnx_file(tmp_path / "bad.onnx", **meta)
    with pytest.raises(ValueError, match=message) as error:
        load_onnx_parser(path)
    assert str(path) in str(error.value)


def test_a_copy_of_a_good_checkpoint_still_loads(ckpt: Path, tmp_path: Path) -> None:
    """The checks refuse damage, not our own files."""
    shutil.copy(ckpt, tmp_path / "copy.ckpt")
    assert read_checkpoint(tmp_path / "copy.ckpt").metadata["class_names"][0] == "background"
