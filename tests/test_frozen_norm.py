"""``cnn.freeze_norm``: the VGG's loaded BatchNorm statistics and affine stay as they are in
training, and each frozen BatchNorm runs inside the convolution before it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from hydra.utils import instantiate

from faceparse.inference import prepare_for_inference
from faceparse.models import VggEncoder
from faceparse.models.vgg import refuse_untrained_frozen_norms
from faceparse.train import train
from faceparse.training.optim import param_groups


def _with_statistics(encoder: VggEncoder, seed: int = 0) -> VggEncoder:
    """Statistics and affines far from a fresh BatchNorm's, as ImageNet weights have."""
    generator = torch.Generator().manual_seed(seed)
    for norm in encoder.norms():
        for tensor, low, high in ((norm.running_mean, -0.5, 0.5), (norm.running_var, 0.5, 2.0),
                                  (norm.weight.data, 0.5, 1.5), (norm.bias.data, -0.2, 0.2)):
            tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    return encoder


def _vgg11_file(path: Path) -> Path:
    """torchvision's vgg11_bn ImageNet file format (``features.<i>.*``), trained-looking."""
    torch.manual_seed(0)
    features = torchvision.models.vgg11_bn(weights=None).features
    for module in features:
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path


def test_a_frozen_norm_computes_and_trains_as_a_batchnorm_in_eval_mode() -> None:
    """Same maps and same gradients as separate BatchNorms that use their statistics."""
    torch.manual_seed(0)
    reference = _with_statistics(VggEncoder("vgg11_bn")).train()
    for norm in reference.norms():
        norm.eval()
        norm.requires_grad_(False)
    frozen = VggEncoder("vgg11_bn", freeze_norm=True)
    frozen.load_state_dict(reference.state_dict())
    frozen.train()
    x = torch.randn(2, 3, 32, 32)

    maps, expected = frozen(x), reference(x)
    assert [m.shape for m in maps] == [e.shape for e in expected]
    for got, want in zip(maps, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    sum(m.square().mean() for m in maps).backward()
    sum(e.square().mean() for e in expected).backward()
    grads = {name: p.grad for name, p in frozen.named_parameters() if p.grad is not None}
    wanted = {name: p.grad for name, p in reference.named_parameters() if p.grad is not None}
    assert sorted(grads) == sorted(wanted)
    assert not any(name.startswith(f"layers.{i}.") for name in grads
                   for i, m in enumerate(frozen.layers) if isinstance(m, torch.nn.BatchNorm2d))
    for name, grad in grads.items():
        torch.testing.assert_close(grad, wanted[name], rtol=1e-4, atol=1e-6)


def test_frozen_norms_stay_in_eval_mode_out_of_the_optimizer_with_the_same_keys() -> None:
    frozen = VggEncoder("vgg11_bn", freeze_norm=True).train()
    assert frozen.training and not any(norm.training for norm in frozen.norms())
    trained = {id(p) for group in param_groups(frozen) for p in group["params"]}
    norm_params = {id(p) for norm in frozen.norms() for p in norm.parameters()}
    assert trained and not trained & norm_params
    assert len(trained) == 2 * sum(isinstance(m, torch.nn.Conv2d) for m in frozen.layers)
    # checkpoints read and write the same keys either way
    assert frozen.state_dict().keys() == VggEncoder("vgg11_bn").state_dict().keys()


def test_frozen_norms_stay_frozen_as_syncbatchnorm(tmp_path: Path) -> None:
    """DDP with ``sync_batchnorm`` converts every BatchNorm: the frozen ones stay frozen."""
    frozen = _with_statistics(VggEncoder("vgg11_bn", freeze_norm=True)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = frozen(x)
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(frozen).train()
    norms = synced.norms()
    assert len(norms) == 6 and all(isinstance(n, torch.nn.SyncBatchNorm) for n in norms)
    assert not any(n.training or n.weight.requires_grad for n in norms)
    statistics = [n.running_mean.clone() for n in norms]
    for got, want in zip(synced(x), expected, strict=True):  # no batch statistics: runs on CPU
        torch.testing.assert_close(got, want)
    assert all(torch.equal(n.running_mean, s) for n, s in zip(norms, statistics, strict=True))


def test_inference_rewrites_keep_what_a_frozen_norm_computes() -> None:
    """Folding (and fusing) for inference gives the maps the training forward gives."""
    frozen = _with_statistics(VggEncoder("vgg11_bn", freeze_norm=True)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = frozen(x)
        folded = prepare_for_inference(frozen, "cpu")
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        for got, want in zip(folded(x), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_frozen_statistics_that_were_never_computed_are_refused(compose, tiny,
                                                                tmp_path: Path) -> None:
    untrained = torch.nn.Sequential(VggEncoder("vgg11_bn", freeze_norm=True))
    with pytest.raises(ValueError, match=r"6 of its 6 BatchNorm layers \(0\) hold the initial"):
        refuse_untrained_frozen_norms(untrained)
    refuse_untrained_frozen_norms(torch.nn.Sequential(VggEncoder("vgg11_bn")))  # not frozen
    _with_statistics(untrained[0])
    refuse_untrained_frozen_norms(untrained)

    with pytest.raises(ValueError, match="cnn.pretrained=true") as info:
        train(compose([*tiny, "cnn.freeze_norm=true"], output_dir=tmp_path))
    assert "cnn.freeze_norm=false" in str(info.value)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow  # a whole command, end to end: in CI's slow suite
def test_training_with_frozen_norm_from_the_cli_keeps_the_loaded_statistics(
        compose, tiny, tmp_path: Path) -> None:
    """``cnn.weights=<torchvision file> cnn.freeze_norm=true``: the convolutions learn, the
    BatchNorms end the run holding exactly what the file gave them."""
    weights = _vgg11_file(tmp_path / "vgg11_bn-6002323d.pth")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "faceparse.train", *tiny, f"cnn.weights={weights}",
           "cnn.freeze_norm=true", "test=false", "+trainer.limit_train_batches=2",
           "+trainer.limit_val_batches=1", f"hydra.run.dir={run}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["faceparse"]["model"]["encoder"]["cnn"]["freeze_norm"] is True
    state = saved["state_dict"]
    loaded = torch.load(weights)
    net = instantiate(compose([*tiny, f"cnn.weights={weights}"]).model.net)
    layers = net.encoder.cnn.layers
    norms = [i for i, m in enumerate(layers) if isinstance(m, torch.nn.BatchNorm2d)]
    convs = [i for i, m in enumerate(layers) if isinstance(m, torch.nn.Conv2d)]
    for i in norms:
        for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(state[f"net.encoder.cnn.layers.{i}.{key}"],
                               loaded[f"features.{i}.{key}"]), (i, key)
    moved = [i for i in convs if not torch.equal(state[f"net.encoder.cnn.layers.{i}.weight"],
                                                 loaded[f"features.{i}.weight"])]
    assert moved == convs
