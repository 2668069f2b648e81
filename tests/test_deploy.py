"""faceparse.deploy: the whole net (DINOv3 ViT-S with RoPE) to ONNX/TorchScript, parity, runtime."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from faceparse.deploy import (
    ParityError,
    check_parity,
    export_net,
    load_onnx_parser,
    parity_inputs,
)
from faceparse.fast_path import FastPath
from faceparse.inference import LoadedModel, Parser, load_model
from faceparse.labels import get_scheme

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def tiny_net(compose, tiny):
    torch.manual_seed(0)
    return instantiate(compose(tiny).model.net).eval()


def test_onnx_export_runs_like_the_torch_net_at_any_size(tiny_net, tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    export_net(tiny_net, out, "onnx", get_scheme("ourface"), 32, dynamic=True)
    parser = load_onnx_parser(out)
    assert parser.scheme == get_scheme("ourface") and parser.num_classes == 11
    assert (parser.image_size, parser.size_multiple, parser.dynamic) == (32, 16, True)
    for shape in [(2, 3, 32, 32), (1, 3, 48, 64)]:  # other batch, other non-square size
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(parser(x), tiny_net(x), atol=1e-4, rtol=1e-4)
    report = check_parity(tiny_net, parser, parity_inputs(2, 32))
    assert report.passed and report.argmax_agreement == 1.0 and report.max_abs_diff < 1e-4


def test_a_static_export_refuses_other_sizes(tiny_net, tmp_path: Path) -> None:
    out = tmp_path / "static.onnx"
    export_net(tiny_net, out, "onnx", get_scheme("ourface"), 32, dynamic=False)
    parser = load_onnx_parser(out)
    assert parser.dynamic is False
    with pytest.raises(ValueError, match="exported for input .* dynamic=true"):
        parser(torch.zeros(1, 3, 48, 48))
    with pytest.raises(ValueError, match="not a multiple of 16"):
        parser(torch.zeros(1, 3, 40, 40))


def test_a_static_export_runs_any_batch_chunk_by_chunk(tiny_net, tmp_path: Path) -> None:
    out = tmp_path / "static.onnx"
    export_net(tiny_net, out, "onnx", get_scheme("ourface"), 32, dynamic=False)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_onnx_parser(out)(x), tiny_net(x), atol=1e-4, rtol=1e-4)


def test_predict_takes_an_onnx_file_and_parses_like_the_torch_net(tiny_net, tmp_path: Path
                                                                  ) -> None:
    out = tmp_path / "model.onnx"
    scheme = get_scheme("ourface")
    export_net(tiny_net, out, "onnx", scheme, 32, dynamic=True)
    onnx = load_model(out, device="cpu", fast_path=FastPath())
    assert onnx.source == out and onnx.scheme == scheme and onnx.image_size == 32
    with pytest.raises(ValueError, match="is an ONNX model, run by onnxruntime: the fast_path"):
        load_model(out, device="cpu", fast_path=FastPath(compile=True))  # would be ignored
    torch_model = LoadedModel(tiny_net, scheme, 32, 16, torch.device("cpu"), out)
    photo = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    got = Parser(onnx, precision="32-true")(photo)
    want = Parser(torch_model, precision="32-true")(photo)
    assert got.labels.shape == (40, 56) and got.class_names == scheme.class_names
    assert (got.labels == want.labels).mean() >= 0.999


def test_torchscript_export_matches(tiny_net, tmp_path: Path) -> None:
    loaded = export_net(tiny_net, tmp_path / "model.pt", "torchscript", get_scheme("ourface"),
                        32, dynamic=True)
    x = parity_inputs(1, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), tiny_net(x))


def test_parity_failure_and_unknown_format_are_refused(tiny_net, tmp_path: Path) -> None:
    def shifted(x: torch.Tensor) -> torch.Tensor:
        return tiny_net(x) + torch.linspace(0, 1, 11)[None, :, None, None]

    with pytest.raises(ParityError, match=r"max \|logit diff\| 1.00e\+00 \(tolerance 0.001\)"):
        check_parity(tiny_net, shifted, parity_inputs(1, 32))
    with pytest.raises(ValueError, match="format=tflite is unknown: choose one of onnx, "
                                         "torchscript"):
        export_net(tiny_net, tmp_path / "m", "tflite", get_scheme("ourface"), 32)


def test_missing_onnxruntime_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"pip install 'faceparse\[export\]'"):
        load_onnx_parser(tmp_path / "model.onnx")


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_predict_with_an_onnx_file_and_no_onnxruntime_is_one_error_line(
        tiny_net, tmp_path: Path) -> None:
    """As typed, where onnxruntime is not installed (a stand-in that fails to import)."""
    export_net(tiny_net, tmp_path / "model.onnx", "onnx", get_scheme("ourface"), 32)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "photo.png")
    (tmp_path / "absent" / "onnxruntime").mkdir(parents=True)
    (tmp_path / "absent" / "onnxruntime" / "__init__.py").write_text(
        "raise ImportError('No module named onnxruntime')\n")
    paths = [str(tmp_path / "absent"), str(Path(__file__).resolve().parents[1])]
    done = subprocess.run(
        [sys.executable, "-m", "faceparse.predict", f"ckpt={tmp_path / 'model.onnx'}",
         f"input={tmp_path / 'photo.png'}", f"output_dir={tmp_path / 'out'}", "device=cpu",
         f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)})
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "running ONNX models needs onnxruntime: pip install 'faceparse[export]'" in (
        done.stdout + done.stderr)
    assert not (tmp_path / "run").exists()  # a refused command leaves no run folder
    assert not any((tmp_path / "out").glob("*"))  # and writes no output


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_bench_deploy_section_times_all_three_engines(compose, tmp_path: Path) -> None:
    from faceparse.bench import run
    from faceparse.bench.report import format_table
    from faceparse.fast_path import inference_bf16

    cfg = compose(["bench.sections=[deploy]", "cnn.arch=vgg11_bn", "vit.size=small",
                   "decoder.decoder_channels=32", "data.image_size=32", "bench.steps=1",
                   "bench.deploy.repeats=2", "bench.deploy.threads=2"], config="bench",
                  output_dir=tmp_path)
    threads = torch.get_num_threads()
    deploy = run(cfg)["deploy"]
    assert deploy["torch_threads"] == deploy["onnxruntime_threads"] == 2
    assert torch.get_num_threads() == threads  # restored for the next section
    assert deploy["parity"]["passed"] and deploy["images_per_repeat"] == 2
    assert deploy["fast_path_parity"]["passed"]
    assert deploy["fast_path_parity"]["argmax_agreement"] >= 0.995
    for engine in ("torch_cpu", "torch_fast_path", "onnxruntime_cpu"):
        assert len(deploy[engine]["all"]) == 2 and deploy[engine]["images_per_s"] > 0
    onnx = deploy["onnxruntime_cpu"]["images_per_s"]
    assert deploy["onnx_vs_torch"] == pytest.approx(onnx / deploy["torch_cpu"]["images_per_s"])
    assert deploy["onnx_vs_fast_path"] == pytest.approx(
        onnx / deploy["torch_fast_path"]["images_per_s"])
    assert deploy["fast_path_precision"] == ("bf16" if inference_bf16("cpu") else "fp32")
    table = format_table({"deploy": deploy})
    assert "deploy onnxruntime_cpu" in table and "deploy torch_fast_path" in table


def test_bench_deploy_refuses_to_time_a_fast_path_that_changes_the_labels(
    compose, tmp_path: Path, monkeypatch
) -> None:
    """A speed figure for a fast path whose labels differ from the plain net's is refused."""
    import faceparse.bench.deploy as deploy_section
    from faceparse.bench import run
    from faceparse.deploy import ParityError

    class Negated(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return -self.net(x)

    monkeypatch.setattr(deploy_section, "prepare_for_inference",
                        lambda net, device, fast_path, bf16=None: Negated(net))
    cfg = compose(["bench.sections=[deploy]", "cnn.arch=vgg11_bn", "vit.size=small",
                   "decoder.decoder_channels=32", "data.image_size=32", "bench.steps=1",
                   "bench.deploy.repeats=1"], config="bench", output_dir=tmp_path)
    with pytest.raises(ParityError, match="fast path .* is not the plain net"):
        run(cfg)


def test_the_export_command_removes_a_file_that_fails_parity(compose, tiny_net, tmp_path: Path,
                                                             monkeypatch) -> None:
    import faceparse.export as export_command
    from faceparse.checkpoints import checkpoint_metadata
    from faceparse.export import export

    def unreachable(net, exported, inputs, atol, min_agreement):  # no export can pass it
        return check_parity(net, exported, inputs, atol, 1.01)

    monkeypatch.setattr(export_command, "check_parity", unreachable)

    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in tiny_net.state_dict().items()},
                "faceparse": checkpoint_metadata(tiny_net.config, get_scheme("ourface"), 32)},
               ckpt)
    out = tmp_path / "model.pt"
    cfg = compose([f"ckpt={ckpt}", f"out={out}", "format=torchscript", "parity.images=1"],
                  config="export")
    with pytest.raises(ParityError, match="argmax agreement 100.0000% \\(at least 101.00%\\)"):
        export(cfg)
    assert not out.exists() and not Path(f"{out}.parity.json").exists()
