"""Fusion options of the dual encoder (``conf/fusion/``, ``fusion.vit_into``) and the
``experiment=ablation_fusion`` grid: every option builds, trains and round-trips through
its checkpoint; bad combinations are refused; the grid expands to its jobs."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import OmegaConf

from faceparse.checkpoints import load_face_parser
from faceparse.cli import CONF_DIR
from faceparse.inference import prepare_for_inference
from faceparse.models import DualEncoder, GatedFusion, VggEncoder
from faceparse.models.fusion_ops import ConcatFusion
from faceparse.train import refuse_unused_fusion, train

pytestmark = pytest.mark.usefixtures("torch_single_thread")

FUSIONS = sorted(p.stem for p in (CONF_DIR / "fusion").glob("*.yaml"))
QUIET = ["callbacks.progress_bar=null", "callbacks.prediction_images=null"]


def test_the_fusion_group_holds_the_documented_options() -> None:
    assert FUSIONS == ["concat", "cross_attn", "gate", "sum", "vit_only"]


@pytest.mark.parametrize(("fusion", "vit_into"), [
    ("vit_only", "[16]"), ("vit_only", "[16,8,4]"), ("concat", "[16]"), ("sum", "[16,8]"),
    ("gate", "[16]"), ("cross_attn", "[16,8,4]"),
])
def test_each_fusion_trains_a_step_and_round_trips(compose, tiny, tmp_path: Path,
                                                   fusion: str, vit_into: str) -> None:
    """Built from config, one optimiser step moves its own weights, and the checkpoint
    alone rebuilds a net with the same logits."""
    cfg = compose([*tiny, *QUIET, f"fusion={fusion}", f"fusion.vit_into={vit_into}"],
                  output_dir=tmp_path)
    module = instantiate(cfg.model)
    encoder = module.net.encoder
    assert isinstance(encoder, DualEncoder)
    assert encoder.strides == (1, 2, 4, 8, 16)
    # the ViT enters the finer levels it is told to, and nowhere else
    assert sorted(map(int, encoder.vit_into)) == sorted(eval(vit_into))[:-1]
    own = {k: v.clone() for k, v in encoder.named_parameters()
           if k.startswith(("fusion.", "vit_into."))}
    assert bool(own) == (fusion != "vit_only" or vit_into != "[16]")

    trainer = L.Trainer(max_steps=1, limit_val_batches=0, logger=False, accelerator="cpu",
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, datamodule=instantiate(cfg.data))
    after = dict(encoder.named_parameters())
    assert all(not torch.equal(v, after[k]) for k, v in own.items())

    path = tmp_path / "fused.ckpt"
    trainer.save_checkpoint(path)
    loaded, _ = load_face_parser(path)
    # the same fast path (memory format) as the trained net, BatchNorm and LayerScale left
    # unfolded (folded ones round differently), so the logits compare exactly
    loaded = prepare_for_inference(loaded, "cpu", dataclasses.replace(
        module.fast_path, fold_batchnorm=False, fold_layer_scale=False))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), module.net.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("overrides", [
    ["encoder=cnn", "fusion=concat"],
    ["encoder=vit", "fusion=gate"],
    ["encoder=vit", "fusion.vit_into=[16,8,4]"],
])
def test_single_branch_encoders_refuse_a_fusion(compose, tiny, tmp_path: Path,
                                                overrides: list[str]) -> None:
    """One branch has nothing to fuse: the run stops before it starts, naming the fix."""
    cfg = compose([*tiny, *overrides], output_dir=tmp_path)
    with pytest.raises(ValueError, match=r"has one branch: use encoder=dual"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("encoder", ["cnn", "vit", "dual"])
def test_the_reference_fusion_goes_with_every_encoder(compose, tiny, encoder: str) -> None:
    refuse_unused_fusion(compose([*tiny, f"encoder={encoder}"]))


def test_dual_encoder_refuses_inconsistent_branches(vit_small) -> None:
    """A fusion that reads VGG block 5 needs it; entry points must be CNN strides."""
    cnn = VggEncoder("vgg11_bn", num_stages=4)
    with pytest.raises(ValueError, match=r"ConcatFusion .* stops at stride 8: set "
                                         r"cnn.num_stages=5"):
        DualEncoder(cnn, vit_small, fusion=ConcatFusion)
    for bad in ([8], [16, 16], [16, 2, 32]):
        with pytest.raises(ValueError, match=r"fusion.vit_into=.*ViT's own 16"):
            DualEncoder(cnn, vit_small, vit_into=bad)


def test_gate_mixes_the_projections_by_its_value() -> None:
    """g*cnn + (1-g)*vit: a saturated gate passes one branch through."""
    op = GatedFusion(cnn_channels=6, vit_channels=4, out_channels=8).eval()
    cnn, vit = torch.randn(2, 6, 3, 3), torch.randn(2, 4, 3, 3)
    torch.nn.init.zeros_(op.gate.weight)
    with torch.no_grad():
        for bias, expected in ((50.0, op.cnn_proj(cnn)), (-50.0, op.vit_proj(vit)),
                               (0.0, (op.cnn_proj(cnn) + op.vit_proj(vit)) / 2)):
            op.gate.bias.fill_(bias)
            torch.testing.assert_close(op(cnn, vit), expected)


def _compose_with_hydra(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("train", overrides=overrides, return_hydra_config=True)


def test_ablation_grid_expands_to_every_combination() -> None:
    """encoder (3) x fusion (5) x ViT entry points (2) x ViT layers (2) = 60 jobs, each
    named after its overrides in the sweep's own folder."""
    cfg = _compose_with_hydra(["experiment=ablation_fusion"])
    params = cfg.hydra.sweeper.params
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    (jobs,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    assert len(jobs) == 60 == len({tuple(job) for job in jobs})
    assert {v for job in jobs for v in job if v.startswith("fusion=")} == {
        f"fusion={f}" for f in FUSIONS}
    assert "encoder=vit" in jobs[20] and "fusion.vit_into=[16,8,4]" in jobs[-1]
    sweep = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)
    assert sweep["subdir"] == "${job_folder:${hydra.job.num},${hydra.job.override_dirname}}"
    assert sweep["dir"].startswith("multirun/${sweep_name}/")
    assert "experiment" in cfg.hydra.job.config.override_dirname.exclude_keys


@pytest.mark.slow
def test_a_fusion_sweep_runs_each_job_in_a_named_folder(tiny, tmp_path: Path) -> None:
    """``-m experiment=ablation_fusion`` as a user runs it, narrowed on the command line
    (which wins over the grid's values of the same key) to two fusion ops."""
    fixed = [*tiny, *QUIET, "test=false", "+trainer.limit_train_batches=1",
             "+trainer.limit_val_batches=1"]
    # a study's fixed overrides join the keys its job names leave out (README)
    names = OmegaConf.load(CONF_DIR / "experiment" / "ablation_fusion.yaml").hydra.job.config
    exclude = [*names.override_dirname.exclude_keys,
               *(o.split("=")[0].lstrip("+") for o in fixed)]
    cmd = [sys.executable, "-m", "faceparse.train", "-m", "experiment=ablation_fusion",
           "encoder=dual", "fusion=vit_only,sum", "fusion.vit_into=[16]", "vit.layers=[-1]",
           *fixed, f"hydra.job.config.override_dirname.exclude_keys=[{','.join(exclude)}]",
           "sweep_name=tiny_study", f"hydra.sweep.dir={tmp_path}/${{sweep_name}}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p.name for p in (tmp_path / "tiny_study").iterdir() if p.is_dir())
    # <job number>_<its overrides>, without the keys every job shares
    assert jobs == ["0_encoder=dual__fusion.vit_into=[16]__fusion=vit_only__vit.layers=[-1]",
                    "1_encoder=dual__fusion.vit_into=[16]__fusion=sum__vit.layers=[-1]"]
    for job in jobs:
        assert (tmp_path / "tiny_study" / job / "checkpoints" / "last.ckpt").is_file()
    net, _ = load_face_parser(tmp_path / "tiny_study" / jobs[1] / "checkpoints" / "last.ckpt")
    assert type(net.encoder.fusion).__name__ == "SumFusion"
