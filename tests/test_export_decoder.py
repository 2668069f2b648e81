"""``python -m faceparse.export_decoder`` as a user runs it, on a real (random) ViT-S run.

The module-level tests (tests/test_checkpoints.py) use a tiny ViT patched into timm; a
subprocess sees the real architecture, so this run uses a real DINOv3 ViT-S whose random
weights were saved as timm's ``.safetensors`` (a file format the loader accepts).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from faceparse.checkpoints import CheckpointKind, load_face_parser, read_checkpoint
from faceparse.models import DinoVitEncoder
from faceparse.train import train

pytestmark = pytest.mark.usefixtures("torch_single_thread")
VIT_FILE = "dinov3_vits16_pretrain_lvd1689m-random00.safetensors"


@pytest.mark.slow
def test_export_command_writes_a_decoder_only_file_that_loads_to_the_same_net(
    compose, tiny, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    vit = DinoVitEncoder(size="small", random_init=True).model
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, tmp_path / VIT_FILE)
    run = tmp_path / "run"
    train(compose([*tiny, f"vit.weights={tmp_path / VIT_FILE}", "vit.random_init=false",
                   "test=false", "callbacks.model_checkpoint.save_top_k=0",
                   "callbacks.prediction_images=null"], output_dir=run))
    full = run / "checkpoints" / "last.ckpt"
    out = tmp_path / "shared" / "decoder.ckpt"

    result = subprocess.run(
        [sys.executable, "-m", "faceparse.export_decoder", f"ckpt={full}", f"out={out}",
         f"hydra.run.dir={tmp_path / 'export'}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "export" / "export_decoder.log").read_text()
    assert f"needs beside it: {VIT_FILE}" in log and "net.encoder.vit.model" in log
    assert read_checkpoint(out).kind is CheckpointKind.WEIGHTS
    assert out.stat().st_size < full.stat().st_size / 2  # the ViT-S was most of it

    with pytest.raises(FileNotFoundError, match=VIT_FILE):
        load_face_parser(out)
    exported, scheme = load_face_parser(out, vit_weights=tmp_path / VIT_FILE)
    reference, _ = load_face_parser(full)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(exported(x), reference(x))
    assert scheme.name == "ourface"


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_export_command_needs_ckpt_and_out(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "faceparse.export_decoder",
                             f"hydra.run.dir={tmp_path}"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1 and result.stderr.startswith("error: ckpt=, out= are required")
