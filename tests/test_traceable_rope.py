"""A dynamic export computes the DINOv3 ViT at every size, not only the export size: the
RoPE tables are traced as ops of the input size. Checked against Meta's own outputs for
the fixture ViT (tests/fixtures/dinov3), whose trained layer scales pass position errors
on (a random ViT's 1e-5 layer scales hide them). And the parity check refuses what it
cannot compare."""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path

import pytest
import timm
import torch
from timm.layers.pos_embed_sincos import RotaryEmbeddingDinoV3
from torch import nn

from faceparse.deploy import ParityError, check_parity
from faceparse.deploy.traceable_rope import rope_table, traceable_rope
from faceparse.models import DinoVitEncoder
from faceparse.models import dinov3 as dinov3_module

pytestmark = pytest.mark.usefixtures("torch_single_thread")
FIXTURES = Path(__file__).parent / "fixtures" / "dinov3"


class Features(nn.Module):
    """The ViT's last stride-16 map: what the decoder reads."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[0]


@pytest.fixture(scope="module")
def official_vit():
    """The fixture's 64-wide ViT with Meta's weights, and Meta's output on a 64x96 input."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dinov3_module.timm, "create_model",
                   partial(timm.create_model, embed_dim=64, depth=4, num_heads=4))
        encoder = DinoVitEncoder(size="small", weights=str(FIXTURES / "dinov3_tiny_official.pth"))
    io = torch.load(FIXTURES / "dinov3_tiny_io.pt")
    return Features(encoder).eval(), io["input"], io["intermediate_normed_reshaped"][3]


@pytest.mark.parametrize("normalize", ["separate", "min", "max"])
@pytest.mark.parametrize("indexing", ["ij", "xy"])
def test_the_tables_are_timms_value_for_value(normalize, indexing):
    rope = RotaryEmbeddingDinoV3(16, normalize_coords=normalize, grid_indexing=indexing).eval()
    for shape in [(1, 1), (4, 6), (7, 3), (32, 32)]:
        assert torch.equal(rope_table(rope, shape), rope.get_embed(shape=shape))
    assert rope_table(rope, (2, 3), torch.bfloat16).dtype == torch.bfloat16


def test_a_vit_traced_at_one_size_runs_right_at_others(official_vit):
    vit, image, official = official_vit
    with torch.no_grad():
        assert torch.equal(vit(image), official)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on Python-side checks
            frozen = torch.jit.trace(vit, torch.zeros(1, 3, 32, 32), check_trace=False)
            with traceable_rope(vit):
                traced = torch.jit.trace(vit, torch.zeros(1, 3, 32, 32), check_trace=False)
        assert float((frozen(image) - official).abs().max()) > 0.1  # what timm's tables do
        assert float((traced(image) - official).abs().max()) < 1e-5
        assert torch.equal(vit(image), official)  # timm's own get_embed is back


def test_a_dynamic_onnx_export_matches_metas_outputs_away_from_its_export_size(
        official_vit, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    vit, image, official = official_vit
    with traceable_rope(vit), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(vit, (torch.zeros(1, 3, 32, 32),), str(tmp_path / "vit.onnx"),
                          input_names=["x"], output_names=["y"], opset_version=17,
                          dynamic_axes={"x": {0: "b", 2: "h", 3: "w"},
                                        "y": {0: "b", 2: "fh", 3: "fw"}}, dynamo=False)
    session = ort.InferenceSession(str(tmp_path / "vit.onnx"),
                                   providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"x": image.numpy()})[0])
    assert float((got - official).abs().max()) < 1e-4


class _Constant(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :3].clone()


def test_parity_refuses_nan_and_an_export_that_cannot_run():
    net, inputs = _Constant(), torch.rand(2, 3, 8, 8)

    def nan_where_the_winner_is(x: torch.Tensor) -> torch.Tensor:
        out = x[:, :3].clone()
        out[:, 0, :2] = float("nan")  # argmax takes NaN as the top class: labels "agree"
        return out

    with pytest.raises(ParityError, match=r"max \|logit diff\| inf"):
        check_parity(net, nan_where_the_winner_is, inputs)

    def frozen(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("Reshape node: requested shape {4,8,8}\nmore detail")

    with pytest.raises(ParityError, match=r"cannot run a 8x8 px input \(RuntimeError: Reshape "
                                          r"node: requested shape \{4,8,8\}\): export this "
                                          r"model with dynamic=false$"):
        check_parity(net, frozen, inputs)
