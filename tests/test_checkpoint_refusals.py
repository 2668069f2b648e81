"""Checkpoints and weight files that would give a wrong result, destroy a file or a traceback:
each is refused in one line naming the file (the audit's findings 2, 3, 5, 7, 8, 9).

Commands run as a user runs them where the refusal is theirs to print; the tiny
checkpoint of tests/conftest.py (random weights, no training) is the starting point.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from safetensors.torch import save_file

from faceparse.checkpoints import (
    META_KEY,
    export_decoder_only,
    load_face_parser,
    load_net_weights,
    read_checkpoint,
    start_from,
)
from faceparse.deploy import load_onnx_parser
from faceparse.labels import get_scheme
from faceparse.models.weights import load_state_dict_file, load_strict
from faceparse.safe_load import NotACheckpointError
from faceparse.writable import refuse_overwriting, replacing

pytestmark = pytest.mark.usefixtures("torch_single_thread")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def command(name: str, *args: str) -> subprocess.Popen:
    """``python -m faceparse.<name> args``, started (several run side by side)."""
    return subprocess.Popen([sys.executable, "-m", f"faceparse.{name}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def finished(process: subprocess.Popen) -> tuple[int, str]:
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stdout + stderr


def one_error_line(output: str, marker: str) -> str:
    """The command's only error line (``error:`` or predict's logged ``[ERROR]``)."""
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if marker in line]
    assert len(errors) == 1, output[-3000:]
    return errors[0]


def copy_of(ckpt: Path, path: Path, edit=None) -> Path:
    """``ckpt`` saved again at ``path``, its contents changed by ``edit`` first."""
    contents = torch.load(ckpt, weights_only=True)
    if edit:
        edit(contents)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(contents, path)
    return path


def as_run(contents: dict) -> None:
    """What makes a file a run to resume (Lightning's training state)."""
    contents.update(optimizer_states=[], loops={}, epoch=0, global_step=1)


def with_nan(contents: dict) -> None:
    """A diverged run: its decoder head is NaN."""
    for key, value in contents["state_dict"].items():
        if key.startswith("net.decoder.final_conv.2."):  # its last convolution
            value.fill_(float("nan"))


def other_labels(contents: dict) -> None:
    """The same 11 outputs, recorded as LaPa's class order."""
    lapa = get_scheme("lapa")
    contents[META_KEY].update(labels=lapa.name, class_names=list(lapa.class_names))


ORIGINAL_HEADS = {"decoder.adapt_scale16.conv.weight": (512, 64, 1, 1),
                  "decoder.adapt_scale8.conv.weight": (256, 512, 1, 1),
                  "decoder.final_conv.2.weight": (11, 64, 1, 1),
                  "encoder.cnn.layers.0.weight": (64, 3, 3, 3)}


def original_file(path: Path, drop: tuple[str, ...] = ()) -> Path:
    """A file in the original project's layout (its heads only), without ``drop``."""
    state = {k: torch.zeros(s) for k, s in ORIGINAL_HEADS.items() if k not in drop}
    torch.save({"state_dict": state}, path)
    return path


# --------------------------------------------------------------------------- 2: out= is ckpt=


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_export_commands_refuse_to_write_over_their_checkpoint(ckpt: Path, tmp_path: Path
                                                               ) -> None:
    source = copy_of(ckpt, tmp_path / "model.ckpt")
    link = tmp_path / "link.ckpt"
    link.symlink_to(source)
    before = source.read_bytes()
    runs = [command("export_decoder", f"ckpt={source}", f"out={source}",
                    f"hydra.run.dir={tmp_path / 'a'}"),
            command("export", f"ckpt={tmp_path}/./model.ckpt", "format=onnx",
                    f"out={link}", f"hydra.run.dir={tmp_path / 'b'}")]
    for process in runs:
        code, output = finished(process)
        assert code == 1, output[-3000:]
        assert "is the checkpoint being read" in one_error_line(output, "error: ")
    assert source.read_bytes() == before and link.resolve() == source
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["link.ckpt",
                                                                         "model.ckpt"]


def test_export_decoder_only_refuses_its_source_by_any_name(tmp_path: Path) -> None:
    source = tmp_path / "model.ckpt"
    source.write_bytes(b"kept")
    for out in (source, tmp_path / "x" / ".." / "model.ckpt"):
        with pytest.raises(ValueError, match="is the checkpoint being read"):
            export_decoder_only(source, out)
    assert source.read_bytes() == b"kept"
    refuse_overwriting(tmp_path / "other.ckpt", source)  # another file: fine


def test_a_replaced_file_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    out = tmp_path / "out.bin"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError), replacing(out) as partial:
        partial.write_bytes(b"half")
        raise RuntimeError("the writer failed")
    assert out.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]
    with replacing(out) as partial:
        partial.write_bytes(b"new")
        assert out.read_bytes() == b"old"  # not yet
    assert out.read_bytes() == b"new" and os.listdir(tmp_path) == ["out.bin"]


# --------------------------------------------------------------------------- 3: train ckpt_path=


@pytest.fixture(scope="module")
def tiny_net(compose, tiny):
    """A net of the tiny config (the checkpoint's architecture), other weights."""
    torch.manual_seed(1)
    return instantiate(compose(tiny).model.net)


def test_resuming_checks_labels_shapes_and_values(ckpt, tiny_net, compose, tiny, tmp_path
                                                  ) -> None:
    ourface = get_scheme("ourface")
    run = copy_of(ckpt, tmp_path / "run.ckpt", as_run)
    assert start_from(run, tiny_net, ourface).path == str(run)  # a matching run resumes

    with pytest.raises(ValueError, match="predicts the 'ourface' classes .* set "
                                         "data.labels=ourface"):
        start_from(run, tiny_net, get_scheme("lapa"))  # 11 classes too, in another order
    narrower = instantiate(compose([*tiny, "decoder.decoder_channels=16"]).model.net)
    with pytest.raises(ValueError, match=f"checkpoint {run} does not fit this model: "
                                         r"\d+ shape mismatches"):
        start_from(run, narrower, ourface)
    diverged = copy_of(ckpt, tmp_path / "nan.ckpt", lambda c: (as_run(c), with_nan(c)))
    with pytest.raises(ValueError, match="NaN/inf values in 2 tensors "
                                         r"\(decoder.final_conv.2.weight"):
        start_from(diverged, tiny_net, ourface)


def test_a_resumed_run_hands_back_its_optimizer_setup_without_tensors(ckpt, tiny_net, tmp_path
                                                                      ) -> None:
    """``train`` checks the command's optimizer against it without reading the file again."""
    groups = [{"lr": 0.01, "weight_decay": 0.0, "params": [0, 1]}]
    schedules = [{"lr_lambdas": [{"min_lr_ratio": 0.1}]}]

    def with_optimizer(contents: dict) -> None:
        as_run(contents)
        contents.update(optimizer_states=[{"state": {0: {"exp_avg": torch.ones(3)}},
                                           "param_groups": groups}], lr_schedulers=schedules)

    run = copy_of(ckpt, tmp_path / "run.ckpt", with_optimizer)
    point = start_from(run, tiny_net, get_scheme("ourface"))
    assert point.optimizer_setup == {"optimizer_states": [{"param_groups": groups}],
                                     "lr_schedulers": schedules}


@pytest.mark.slow  # a whole command, end to end: in CI's slow suite
def test_train_refuses_a_run_in_another_class_order_in_one_line(ckpt, tiny, tmp_path) -> None:
    """``train=false ckpt_path=`` would otherwise score LaPa-order predictions as ourface."""
    run = copy_of(ckpt, tmp_path / "lapa_run.ckpt", lambda c: (as_run(c), other_labels(c)))
    code, output = finished(command("train", *tiny, "train=false", f"ckpt_path={run}",
                                    "callbacks.progress_bar=null",
                                    f"hydra.run.dir={tmp_path / 'run'}"))
    assert code == 1, output[-3000:]
    line = one_error_line(output, "error: ")
    assert f"{run} predicts the 'lapa' classes" in line and "data.labels=lapa" in line
    assert "test/f1_mean" not in output


# --------------------------------------------------------------------------- 5: NaN weights


def test_nan_weights_are_refused_by_name(ckpt, tiny_net, tmp_path) -> None:
    diverged = copy_of(ckpt, tmp_path / "nan.ckpt", with_nan)
    with pytest.raises(ValueError, match=f"{diverged} holds NaN/inf values in 2 tensors "
                                         r"\(decoder.final_conv.2.weight, "
                                         r"decoder.final_conv.2.bias\): the run"):
        load_face_parser(diverged)
    with pytest.raises(ValueError, match="NaN/inf"):
        load_net_weights(tiny_net, diverged, get_scheme("ourface"))
    layer = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"weights x holds NaN/inf values in 1 tensors \(bias\)"):
        load_strict(layer, {"weight": torch.ones(2, 2), "bias": torch.tensor([1, float("inf")])},
                    "weights x")
    assert not torch.equal(layer.weight, torch.ones(2, 2))  # nothing was loaded


# --------------------------------------------------------------------------- 7: weight files


def _truncated_safetensors(path: Path) -> None:
    save_file({"w": torch.zeros(1000)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])


BAD_WEIGHTS = {  # name -> (how to write it, what the refusal says)
    "empty.safetensors": (lambda p: p.write_bytes(b""), "is not a safetensors file: the "
                                                         "file is empty"),
    "text.safetensors": (lambda p: p.write_text("not weights at all\n" * 10),
                         "is not a valid safetensors file"),
    "truncated.safetensors": (_truncated_safetensors, "is not a valid safetensors file"),
    "tensor.pth": (lambda p: torch.save(torch.zeros(3), p), "holds a Tensor, not a state dict"),
    "list.pth": (lambda p: torch.save([torch.zeros(3)], p), "holds a list, not a state dict"),
    "mixed.pth": (lambda p: torch.save({"w": torch.zeros(1), "epoch": 3}, p),
                  r"is not a state dict of tensors: 1 entries are not named tensors \('epoch'"),
}


@pytest.mark.parametrize("name", BAD_WEIGHTS)
def test_a_weights_file_that_holds_no_state_dict_is_named(name: str, tmp_path: Path) -> None:
    write, message = BAD_WEIGHTS[name]
    path = tmp_path / name
    write(path)
    with pytest.raises(NotACheckpointError, match=message) as info:
        load_state_dict_file(path, "DINOv3", "somewhere")
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize(("overrides", "name"), [
    (("vit.random_init=false", "vit.weights={}"), "empty.safetensors"),
    (("cnn.weights={}",), "list.pth"),
])
def test_train_names_a_broken_weights_file_in_one_line(tiny, tmp_path, overrides, name) -> None:
    write, message = BAD_WEIGHTS[name]
    path = tmp_path / name
    write(path)
    code, output = finished(command("train", *tiny, *(o.format(path) for o in overrides),
                                    f"hydra.run.dir={tmp_path / 'run'}"))
    assert code == 1, output[-3000:]
    assert one_error_line(output, "error: ").startswith(f"error: {path} {message}")


# --------------------------------------------------------------------------- 8: broken ONNX


@pytest.mark.parametrize(("content", "message"), [
    (b"", "is not a valid ONNX model: the file is empty"),
    (b"just some text\n", "onnxruntime cannot load"),
])
def test_a_broken_onnx_file_is_named(tmp_path: Path, content: bytes, message: str) -> None:
    pytest.importorskip("onnxruntime")
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        load_onnx_parser(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- 9: original files


def test_an_incomplete_original_file_names_what_it_lacks(tmp_path: Path) -> None:
    path = original_file(tmp_path / "partial.ckpt", drop=("decoder.final_conv.2.weight",))
    for read in (read_checkpoint, load_face_parser):
        with pytest.raises(ValueError, match=f"{path} looks like an original FaceParsing "
                                             f"checkpoint but lacks decoder.final_conv.2.weight"):
            read(path)


def test_an_original_file_into_a_run_without_a_vit_says_so(compose, tiny, tmp_path) -> None:
    path = original_file(tmp_path / "decoder.ckpt")
    cnn_only = instantiate(compose([*tiny, "encoder=cnn"]).model.net)
    with pytest.raises(ValueError, match="no ViT encoder at encoder.vit: it needs encoder=dual"):
        load_net_weights(cnn_only, path, get_scheme("ourface"))


# --------------------------------------------------------------------------- predict, as typed


@pytest.mark.slow
def test_predict_refuses_each_bad_model_in_one_line(ckpt, tmp_path) -> None:
    """A diverged checkpoint, a broken ONNX file, an incomplete original file and a run
    stopped before its first validation (no best checkpoint, only last and on_exception)."""
    pytest.importorskip("onnxruntime")
    photo = tmp_path / "face.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(photo)
    stopped = tmp_path / "stopped"
    (stopped / "checkpoints").mkdir(parents=True)
    for name in ("last.ckpt", "on_exception.ckpt"):
        shutil.copy(ckpt, stopped / "checkpoints" / name)
    (tmp_path / "text.onnx").write_text("not a model\n")
    cases = {  # ckpt= -> what the one error line says
        copy_of(ckpt, tmp_path / "nan.ckpt", with_nan): "holds NaN/inf values",
        tmp_path / "text.onnx": "onnxruntime cannot load",
        original_file(tmp_path / "partial.ckpt", ("decoder.adapt_scale8.conv.weight",)):
            "lacks decoder.adapt_scale8.conv.weight (an incomplete file?)",
        stopped: "no best checkpoint",
    }
    started = {model: command("predict", f"ckpt={model}", f"input={photo}", "device=cpu",
                              f"output_dir={tmp_path / 'out'}",
                              f"hydra.run.dir={tmp_path / 'run' / Path(model).name}")
               for model in cases}
    for model, process in started.items():
        code, output = finished(process)
        assert code == 2, output[-3000:]
        line = one_error_line(output, "[ERROR]")
        assert cases[model] in line and str(model) in line, line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
