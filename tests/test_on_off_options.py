"""On/off options typed as words (``no``, ``off``) and other mistyped values, refused.

Hydra hands ``dynamic=no`` to a command as the text ``"no"``, and ``bool("no")`` is True:
before, export exported a dynamic model, export_decoder unpickled with
``trust_pickle=no``, and the Python parser ignored boxes it was given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from faceparse.export import export
from faceparse.export_decoder import export_decoder
from faceparse.inference import Parser
from faceparse.labels import get_scheme, mapping_lut


@pytest.mark.parametrize(("override", "message"), [
    ("dynamic=no", "dynamic=no: use true or false"),
    ("trust_pickle=off", "trust_pickle=off: use true or false"),
    ("image_size=abc", "image_size=abc: the input side in pixels"),
    ("parity.images=0", "parity.images=0: the number of synthetic portraits"),
    ("parity.min_agreement=2", "parity.min_agreement=2: a share of pixels, between 0 and 1"),
])
def test_export_refuses_mistyped_options_before_reading(compose, tmp_path: Path, override: str,
                                                        message: str) -> None:
    absent = tmp_path / "absent.ckpt"  # reading it would fail: the option is refused first
    cfg = compose([f"ckpt={absent}", f"out={tmp_path / 'm.onnx'}", override], config="export")
    with pytest.raises(ValueError, match=message):
        export(cfg)
    assert not (tmp_path / "m.onnx").exists()


def test_export_decoder_refuses_trust_pickle_typed_no(compose, ckpt: Path, tmp_path: Path
                                                      ) -> None:
    cfg = compose([f"ckpt={ckpt}", f"out={tmp_path / 'd.ckpt'}", "trust_pickle=no"],
                  config="export_decoder")
    with pytest.raises(ValueError, match="trust_pickle=no: use true or false"):
        export_decoder(cfg)
    assert not (tmp_path / "d.ckpt").exists()


def test_parser_refuses_boxes_it_would_ignore(parser: Parser) -> None:
    rgb = np.zeros((24, 20, 3), np.uint8)
    assert parser.crop == "none"
    with pytest.raises(ValueError, match="boxes need a parser made with crop='box'; this one "
                                         "has crop='none'"):
        parser(rgb, boxes=[(0, 0, 5, 5)])
    with pytest.raises(ValueError, match="crop='box'"):
        parser.predict_batch([rgb], boxes=[[(0, 0, 5, 5)]])


@pytest.mark.parametrize(("options", "message"), [
    ({"margin": -0.6}, "margin=-0.6: the share of a face box"),
    ({"margin": "abc"}, "margin=abc"),
    ({"keep_aspect": "no"}, "keep_aspect=no: use true or false"),
    ({"image_size": "abc"}, "image_size=abc: the model input side"),
    ({"image_size": 0}, "image_size=0"),
])
def test_parser_refuses_mistyped_options(parser: Parser, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Parser(parser.model, **options)


def test_probs_name_the_model_classes_when_labels_map_them(compose, tiny, tmp_path: Path
                                                           ) -> None:
    """With ``labels=``, ``probs`` keeps the model's class order: ``prob_class_names`` says
    which, so ``probs[prob_class_names.index(c)]`` is class ``c``'s probability."""
    from conftest import save_tiny_checkpoint

    path = save_tiny_checkpoint(compose, [*tiny, "data.labels=celebamask"],
                                tmp_path / "c19.ckpt")
    torch.manual_seed(0)
    mapped = Parser.from_checkpoint(path, device="cpu", labels="celebamask_farl")
    rgb = np.random.default_rng(0).integers(0, 256, (40, 32, 3), np.uint8)
    result = mapped(rgb, probs=True)
    model_names = get_scheme("celebamask").class_names
    assert result.class_names == get_scheme("celebamask_farl").class_names
    assert result.class_names != model_names  # the case the names are for
    assert result.prob_class_names == model_names
    assert result.probs.shape == (len(model_names), 40, 32)
    plain = Parser.from_checkpoint(path, device="cpu")(rgb, probs=True)
    # the written ids are the model's mapped by name (a model's id kept would mislabel them)
    lut = mapping_lut(get_scheme("celebamask"), get_scheme("celebamask_farl"))
    np.testing.assert_array_equal(result.labels, lut[plain.labels])
    assert not np.array_equal(result.labels, plain.labels)  # the mapping is no identity here
    hair = model_names.index("hair")
    np.testing.assert_array_equal(result.probs[result.prob_class_names.index("hair")],
                                  plain.probs[hair])
    assert mapped(rgb).prob_class_names is None  # no probs asked: nothing to name


@pytest.mark.slow  # whole commands in subprocesses: CI's slow suite
@pytest.mark.parametrize(("command", "args"), [
    ("export", ["ckpt=absent.ckpt", "out=m.onnx", "dynamic=no"]),
    ("train", ["experiment=quickstart", "cnn.freeze_norm=Off"]),
])
def test_any_command_refuses_a_word_for_true_or_false(tmp_path: Path, command: str,
                                                      args: list[str]) -> None:
    """As a user types it: one ``error:`` line before any work, for any option (the
    commands' own checks name the options they know; this catches every one)."""
    import subprocess
    import sys

    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", f"faceparse.{command}", *args,
                           f"hydra.run.dir={run}"], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 1 and len(errors) == 1, done.stderr[-2000:]
    assert errors[0].startswith(f"error: {args[-1]}: use true or false")
    assert "Traceback" not in done.stderr and not run.exists()
    assert not (tmp_path / "m.onnx").exists()
