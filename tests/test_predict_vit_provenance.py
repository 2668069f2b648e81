"""The DINOv3 file is half of the original project's model: a mask made with one records
it, and a rerun with another file (``vit_weights=``) parses the photo again.

Uses the tiny official-format ViT of tests/test_checkpoints.py (its ``tiny_vit`` fixture).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from predict_helpers import predict_config, write_image
from test_checkpoints import OFFICIAL, original_checkpoint, original_model, tiny_vit  # noqa: F401

from faceparse.data.io import read_png_text
from faceparse.inference.provenance import RECORD_KEY
from faceparse.predict import predict

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.mark.slow  # a whole command end to end (10-17 s): in CI's slow suite
def test_a_rerun_with_another_dinov3_file_parses_again(compose, tmp_path: Path, caplog
                                                       ) -> None:
    decoder_ckpt = tmp_path / "decoder.ckpt"
    original_checkpoint(original_model(11), decoder_ckpt, with_vit=False)
    vit_a, vit_b = tmp_path / "vitA.pth", tmp_path / "vitB.pth"
    shutil.copy(OFFICIAL, vit_a)
    state = torch.load(OFFICIAL, weights_only=True)  # same shapes, other block weights
    state = {k: v + 0.05 if k.startswith("blocks.") and v.is_floating_point() else v
             for k, v in state.items()}
    torch.save(state, vit_b)
    write_image(tmp_path / "in" / "a.png", (32, 32))
    out = tmp_path / "out"

    def run(vit: Path) -> dict:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            return predict(predict_config(compose, tmp_path, decoder_ckpt,
                                          f"input={tmp_path / 'in'}", f"output_dir={out}",
                                          f"vit_weights={vit}", "image_size=32"))

    assert run(vit_a)["images"] == 1
    record = json.loads(read_png_text(out / "a_mask.png")[RECORD_KEY])
    assert [s["path"] for s in record["vit_weights"]] == [str(vit_a)]
    assert run(vit_a)["skipped"] == 1  # the same file: nothing to redo
    again = run(vit_b)
    assert (again["redone"], again["skipped"]) == (1, 0)
    assert f"made with DINOv3 weights {vit_a}" in caplog.text and f"not {vit_b}" in caplog.text
