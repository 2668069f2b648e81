"""A checkpoint's net config may only build our model classes.

The config is plain data (it passes ``torch.load(weights_only=True)``), yet Hydra calls
whatever a ``_target_`` names and follows attribute chains out of any module: a crafted
file could run code without a pickle. Each refusal here happens before anything is built.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from faceparse.checkpoints import META_KEY, build_net, export_decoder_only, load_face_parser
from faceparse.checkpoints import original as original_project
from faceparse.checkpoints.trust import check_net_config, model_class
from faceparse.labels import get_scheme
from faceparse.models import DinoVitEncoder, FaceParser, VggEncoder


def evil_config(marker: Path) -> dict[str, Any]:
    """The audit's exploit: attribute chains from faceparse.models to Path.write_text and
    torch.load write a protocol-0 pickle that runs a shell command when unpickled."""
    payload = str(marker.with_suffix(".pkl"))
    pickle_text = f"cos\nsystem\n(S'echo ran > {marker}'\ntR."
    return {
        "_target_": "faceparse.models.weights.torch.load",
        "f": payload,
        "weights_only": False,
        "map_location": {
            "_target_": "faceparse.models.weights.Path.write_text",
            "_args_": [{"_target_": "faceparse.models.weights.Path", "_args_": [payload]},
                       pickle_text],
        },
    }


def save_with_config(path: Path, model: dict[str, Any]) -> Path:
    """A data-only checkpoint whose metadata carries ``model`` as its net config."""
    scheme = get_scheme("ourface")
    torch.save({META_KEY: {"version": 1, "labels": scheme.name,
                           "class_names": list(scheme.class_names), "image_size": 32,
                           "model": model},
                "state_dict": {"net.x": torch.zeros(1)}}, path)
    return path


@pytest.fixture(scope="module")
def real_config(ckpt: Path) -> dict[str, Any]:
    """The net config a faceparse.train run records (the tiny dual net)."""
    return torch.load(ckpt, weights_only=True)[META_KEY]["model"]


def test_the_audit_exploit_runs_nothing_and_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = save_with_config(tmp_path / "evil.ckpt", evil_config(marker))
    for load in (load_face_parser, lambda p: export_decoder_only(p, tmp_path / "out.ckpt")):
        with pytest.raises(ValueError, match="refusing to build its net config") as info:
            load(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
        assert "faceparse.models.weights.torch.load" in str(info.value)
    assert not marker.exists() and not marker.with_suffix(".pkl").exists()
    assert not (tmp_path / "out.ckpt").exists()


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_predict_refuses_the_exploit_in_one_line(tmp_path: Path) -> None:
    """As a user runs it: exit 2 with the reason, no traceback, no code run."""
    marker = tmp_path / "PWNED"
    path = save_with_config(tmp_path / "evil.ckpt", evil_config(marker))
    (tmp_path / "face.png").write_bytes(b"")  # never read: the model loads first
    result = subprocess.run(
        [sys.executable, "-m", "faceparse.predict", f"ckpt={path}",
         f"input={tmp_path / 'face.png'}", "device=cpu", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr  # predict logs its refusal
    assert result.returncode == 2, output[-3000:]
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and "refusing to build its net config" in errors[0], output
    assert str(path) in errors[0] and "Traceback" not in output
    assert not marker.exists() and not marker.with_suffix(".pkl").exists()


def _set(config: dict[str, Any], at: str, key: str, value: Any) -> dict[str, Any]:
    config = copy.deepcopy(config)
    node = config
    for part in filter(None, at.split(".")):
        node = node[part]
    node[key] = value
    return config


@pytest.mark.parametrize(("at", "key", "value", "reason"), [
    # attribute chains out of the package, each to something callable
    ("", "_target_", "faceparse.models.weights.torch.load", "no faceparse model class"),
    ("encoder.cnn", "_target_", "faceparse.models.vgg.torchvision.models.vgg11",
     "no faceparse model class"),
    ("encoder.cnn", "_target_", "faceparse.models.weights.Path", "no faceparse model class"),
    # functions and classes imported into the package, and a look-alike package name
    ("encoder.cnn", "_target_", "faceparse.models.weights.load_strict",
     "no faceparse model class"),
    ("encoder.vit", "_target_", "faceparse.models.rope_attention.EvaAttention",
     "no faceparse model class"),
    ("encoder.cnn", "_target_", "faceparse.models_extra.VggEncoder", "no faceparse model class"),
    ("encoder.cnn", "_target_", "os.system", "no faceparse model class"),
    # Hydra's keys that pass or call things, and _partial_ with nothing to apply it to
    ("encoder.cnn", "_args_", [{"_target_": "faceparse.models.VggEncoder"}], "Hydra's _args_"),
    ("", "_recursive_", False, "Hydra's _recursive_"),
    ("encoder.cnn", "_convert_", "all", "Hydra's _convert_"),
    ("encoder", "extra", {"_partial_": True}, "without a model class"),
    # OmegaConf resolvers run on interpolations
    ("encoder.cnn", "arch", "${oc.env:HOME}", "interpolation"),
])
def test_anything_but_our_model_classes_is_refused(real_config, at, key, value, reason
                                                   ) -> None:
    with pytest.raises(ValueError, match=reason):
        build_net(_set(real_config, at, key, value))


def test_the_top_level_must_build_a_face_parser(real_config) -> None:
    with pytest.raises(ValueError, match="not a FaceParser"):
        check_net_config(real_config["encoder"]["cnn"])
    with pytest.raises(ValueError, match="not a mapping"):
        check_net_config(["faceparse.models.FaceParser"])  # type: ignore[arg-type]


def test_every_config_the_project_writes_is_accepted(real_config, compose, tiny) -> None:
    """The recorded configs of every encoder and fusion, and the original project's."""
    from hydra.utils import instantiate

    check_net_config(real_config)
    for overrides in (["encoder=cnn"], ["encoder=vit"], ["fusion=cross_attn"],
                      ["fusion=concat"], ["fusion=gate"], ["fusion=sum"]):
        cfg = compose([*tiny, *overrides])
        with torch.device("meta"):
            check_net_config(instantiate(cfg.model.net).config, str(overrides))
    shapes = {"decoder.adapt_scale16.conv.weight": torch.empty(512, 768, 1, 1),
              "decoder.adapt_scale8.conv.weight": torch.empty(256, 512, 1, 1),
              "decoder.final_conv.2.weight": torch.empty(19, 64, 1, 1)}
    check_net_config(original_project.original_net_config(shapes))


def test_model_class_resolves_exact_names_only() -> None:
    assert model_class("faceparse.models.FaceParser") is FaceParser
    assert model_class("faceparse.models.dinov3.DinoVitEncoder") is DinoVitEncoder
    assert model_class("faceparse.models.vgg.VggEncoder") is VggEncoder
    for name in ("faceparse.models.FaceParser.__init__", "faceparse.models", "FaceParser",
                 "faceparse.models.vgg.nn.Module", 42, None):
        assert model_class(name) is None, name
