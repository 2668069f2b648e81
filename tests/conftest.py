"""Shared fixtures: tiny inputs, the reference checkpoint key list, Hydra composition."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

REPO_ROOT = Path(__file__).resolve().parents[1]
# Copies of the project's shared fixtures (see tests/fixtures/README.md).
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SEED_CHECKPOINT_KEYS = FIXTURES / "seed_checkpoint_keys.json"
DINOV3_FIXTURE = FIXTURES / "dinov3"

# Tests compare predictions with fp32 NCHW references, and the CPU policy's probes time a
# (possibly busy) machine: the test session and its subprocesses run fp32 NCHW on the CPU
# whatever this CPU is, and whatever the shell exported (the README's switches).
# tests/test_hardware.py and test_fast_path.py cover the choice.
os.environ["FACEPARSE_CPU_BF16"] = "0"
os.environ["FACEPARSE_CPU_CHANNELS_LAST"] = "0"
os.environ.pop("FACEPARSE_CPU_REUSE_MEMORY", None)  # test_cpu_memory sets it where it tests it


def pytest_make_parametrize_id(config: pytest.Config, val: object, argname: str) -> str | None:
    """Spell the FaceSynthetics scheme ``facesynth`` in test ids.

    ``pytest -k "not synthetic"`` (which skips the slow synthetic-data tests) would
    otherwise also drop every label/transform test of the FaceSynthetics scheme.
    """
    return "facesynth" if val == "facesynthetics" else None


@pytest.fixture(scope="module")
def torch_single_thread():
    """Run a module's tiny CPU tensors on one thread.

    On inputs this small, intra-op threads only add synchronisation, and on a busy
    2-core machine OpenMP's spinning makes forwards tens of times slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def seed_checkpoint_shapes() -> dict[str, tuple[int, ...]]:
    """Every ``state_dict`` key of the original project's checkpoint and its shape."""
    if not SEED_CHECKPOINT_KEYS.is_file():
        pytest.skip(f"{SEED_CHECKPOINT_KEYS} not available")
    state = json.loads(SEED_CHECKPOINT_KEYS.read_text())["state_dict"]
    return {k: tuple(v) for k, v in state.items()}


@pytest.fixture(scope="session")
def dinov3_fixture() -> Path:
    """Folder with the tiny official-format DINOv3 checkpoint and its reference outputs."""
    return DINOV3_FIXTURE


@pytest.fixture(scope="session")
def vit_small():
    """One frozen DINOv3 ViT-S/16 (random weights) shared by read-only tests."""
    from faceparse.models import DinoVitEncoder

    torch.manual_seed(0)
    return DinoVitEncoder(size="small", random_init=True)


# A small CPU model on a few tiny synthetic faces: what most training tests run.
TINY = (
    "cnn.arch=vgg11_bn",
    "vit.size=small",
    "vit.random_init=true",
    "decoder.decoder_channels=32",
    "data.image_size=32",
    "data.batch_size=4",
    "data.dataset.sizes={train: 8, val: 4, test: 4}",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.log_every_n_steps=1",
)


@pytest.fixture(scope="session")
def tiny() -> tuple[str, ...]:
    """The :data:`TINY` overrides."""
    return TINY


@pytest.fixture(scope="session")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., DictConfig]:
    """Compose ``conf/<config>.yaml`` as ``python -m faceparse.<command>`` would.

    ``compose(overrides, config="train", output_dir=None)``: the resolvers are registered,
    the Hydra config is set with the run folder in ``output_dir`` (default: a fresh
    temporary folder) so ``${hydra:...}`` resolves, then removed from the returned config,
    which resolves as the task sees it.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from faceparse.cli import CONF_DIR, register_resolvers

    register_resolvers()

    def _compose(overrides: Sequence[str] = (), config: str = "train",
                 output_dir: str | Path | None = None) -> DictConfig:
        output_dir = Path(output_dir or tmp_path_factory.mktemp("run"))
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config, overrides=list(overrides), return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg.hydra
        return cfg

    return _compose


@pytest.fixture(scope="session")
def dataset_copies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """Small copies of every dataset in its distributed layout, written once per session:
    name -> (data.root, {sample id: native mask}). Tests that damage files copy them first."""
    import fixtures_data as fx

    base = tmp_path_factory.mktemp("datasets")
    return {
        "celebamask": (base / "CelebAMask-HQ", fx.write_celebamask(base / "CelebAMask-HQ")),
        "lapa": (base / "LaPa", fx.write_lapa(base / "LaPa")),
        "facesynthetics": (base / "fs", fx.write_facesynthetics(base / "fs")),
        "helen": (base / "helen", fx.write_helenstar(base / "helen")),
        "helen_smith": (base / "smith", fx.write_helen_smith(base / "smith")),
        "folder": (base / "folder", fx.write_folder(base / "folder")),
    }


def state_shapes(module: torch.nn.Module, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """``{prefix + key: shape}`` of a module's state dict (buffers included)."""
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------- a tiny predictor


def save_tiny_checkpoint(compose, tiny, path: Path, image_size: int | None = 32) -> Path:
    """A checkpoint of a tiny random net in our format (no training needed)."""
    from faceparse.checkpoints import META_KEY, checkpoint_metadata
    from faceparse.labels import get_scheme

    cfg = compose(list(tiny))
    torch.manual_seed(0)
    net = instantiate(cfg.model.net)
    meta = checkpoint_metadata(net.config, get_scheme(cfg.data.labels), image_size)
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                META_KEY: meta}, path)
    return path


@pytest.fixture(scope="module")
def ckpt(compose, tiny, tmp_path_factory) -> Path:
    """The tiny net's checkpoint (32 px), one per test module."""
    return save_tiny_checkpoint(compose, tiny, tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture(scope="module")
def parser(ckpt):
    """A CPU :class:`~faceparse.inference.Parser` of :func:`ckpt`."""
    from faceparse.inference import Parser

    return Parser.from_checkpoint(ckpt, device="cpu")


@pytest.fixture
def trained_looking_net(compose, tiny) -> torch.nn.Module:
    """The tiny dual net with BatchNorm statistics and affines far from their defaults."""
    torch.manual_seed(0)
    net = instantiate(compose(tiny).model.net)
    for bn in net.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.2, 0.2)
    return net.eval()
