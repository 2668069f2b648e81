"""The fast path on a real GPU: what the CPU suite can only fake (skipped without CUDA).

Run on a GPU machine with ``pytest tests/test_cuda.py``; speeds come from
``python -m faceparse.bench compare=fast_path`` (BENCHMARKS.md).
"""

from __future__ import annotations

import copy
from unittest import mock

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torch import nn
from torch.utils.data import DataLoader

from faceparse.bench.census import OpCensus, _stages, census_step
from faceparse.fast_path import FastPath
from faceparse.inference import predict, prepare_for_inference
from faceparse.inference.conv_relu import ConvReLU, fused_conv_relu_dtypes
from faceparse.models import rope_attention
from faceparse.models.dinov3 import DinoVitEncoder, frozen_vits_to_bf16

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SMALL = ["cnn.arch=vgg11_bn", "vit.size=small", "vit.random_init=true",
         "decoder.decoder_channels=32", "trainer=gpu"]


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def test_training_on_cuda_uses_every_fast_path_option(compose,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    cfg = compose(SMALL)
    assert cfg.trainer.precision == "bf16-mixed"
    module = instantiate(cfg.model)
    vit_before = {k: v.clone() for k, v in module.net.encoder.vit.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in module.net.decoder.state_dict().items()}
    batch = {"image": torch.randn(2, 3, 64, 64),
             "mask": torch.randint(0, module.scheme.num_classes, (2, 64, 64), dtype=torch.uint8)}
    trainer = L.Trainer(accelerator="gpu", devices=1, precision=cfg.trainer.precision,
                        max_steps=2, gradient_clip_val=1.0, logger=False,
                        enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, DataLoader([batch, batch], batch_size=None))
    assert torch.backends.cudnn.benchmark
    assert trainer.optimizers[0].defaults["fused"]
    convs = [m.weight for m in module.net.modules()
             if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    vit = module.net.encoder.vit
    assert vit.compute_dtype == torch.bfloat16  # bf16-mixed training stores it in bf16
    # not trained: each frozen weight is what it was, rounded to bf16 as a bf16-stored ViT's
    # state_dict documents (tests/test_frozen_vit_bf16.py); buffers (RoPE periods) are exact
    stored = {name for name, _ in vit.named_parameters()}
    vit_after = vit.state_dict()
    for key, before in vit_before.items():
        expected = before.bfloat16().to(before.dtype) if key in stored else before
        assert torch.equal(vit_after[key].cpu(), expected), key
    decoder_after = module.net.decoder.state_dict()
    assert any(not torch.equal(decoder_before[k], decoder_after[k].cpu())
               for k in decoder_before if decoder_before[k].is_floating_point())


def test_bf16_inference_matches_fp32(compose, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    net = instantiate(compose(SMALL).model.net)
    images = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        reference = net.eval()(images)  # fp32 on the CPU
    net = prepare_for_inference(net, "cuda")
    assert torch.backends.cudnn.benchmark
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16):
        logits = net(images.cuda())
    assert logits.dtype == torch.bfloat16
    assert relative_error(logits.cpu(), reference) < 3e-2
    labels = predict(net, images, batch_size=2).labels
    agreement = (labels.long() == reference.argmax(1)).float().mean().item()
    assert agreement > 0.8  # random weights: some logits are near-ties


def test_the_census_makes_the_dtype_choices_this_gpu_makes(compose) -> None:
    """The census emulates CUDA autocast on fake tensors (BENCHMARKS.md, "What a GPU step
    moves"); the real forward here must run its resizes, norms and concatenations, stage by
    stage, in the dtypes the census counted."""
    watched = {"upsample_bilinear2d", "native_layer_norm", "cat"}
    module = instantiate(compose(SMALL).model)
    net = module.net.train()
    frozen_vits_to_bf16(net)
    net.to(memory_format=torch.channels_last)
    rows = census_step(copy.deepcopy(net), module.criterion, batch=2, size=64,
                       num_classes=module.scheme.num_classes)
    emulated = {(r["stage"], r["op"], r["dtype"]) for r in rows
                if r["phase"] == "forward" and r["op"] in watched and r["stage"] != "loss"}
    real, tags = OpCensus(), {}
    net.cuda()
    image = torch.randn(2, 3, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last)
    with real, _stages(net, real, tags), torch.autocast("cuda", torch.bfloat16):
        net.forward_with_aux(image)
    seen = {(stage, op, dtype) for (_, stage, _, op, dtype) in real.rows if op in watched}
    assert {op for _, op, _ in emulated} == watched
    assert seen == emulated


def test_fused_rope_gives_timms_bits_on_the_gpu() -> None:
    """The GPU takes the rotation's other branch (mixed-dtype kernels, no cast of its own)."""
    torch.manual_seed(0)
    plain = DinoVitEncoder(size="small", random_init=True).eval().cuda()
    with torch.no_grad():
        for param in plain.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    frozen_vits_to_bf16(plain)
    fused = copy.deepcopy(plain)
    assert rope_attention.fuse_rope(fused) == 12
    image = torch.randn(2, 3, 80, 64, device="cuda")
    with mock.patch.object(rope_attention, "rotate_qk", wraps=rope_attention.rotate_qk) as spy, \
            torch.inference_mode(), torch.autocast("cuda", torch.bfloat16):
        assert torch.equal(fused(image)[0], plain(image)[0])
    assert spy.call_count == 12


def test_overlapped_copies_give_the_labels_of_waiting_after_every_batch(compose) -> None:
    """Pinned, non-blocking copies collected one batch late: the same labels, in order."""
    torch.manual_seed(0)
    # cuDNN's autotuning could pick other kernels for the second call: the same ones here
    net = prepare_for_inference(instantiate(compose(SMALL).model.net), "cuda",
                                FastPath(cudnn_benchmark=False))
    images = torch.randn(5, 3, 64, 64)  # batches of 2, 2 and 1
    waited = predict(net, images, batch_size=2, probs=True, overlap=False)
    overlapped = predict(net, images, batch_size=2, probs=True)  # the default on a GPU
    assert torch.equal(overlapped.labels, waited.labels)
    assert torch.equal(overlapped.probs, waited.probs)
    assert overlapped.labels.device.type == "cpu" and not overlapped.labels.is_pinned()


def test_cudnns_fused_convolution_and_relu_gives_the_plain_nets_logits(compose) -> None:
    """``fast_path.fuse_conv_relu=true`` on CUDA: cuDNN's call passes its probe in bf16 and
    fp32, and the rewritten net predicts what the net with separate ReLUs predicts."""
    dtypes, problems = fused_conv_relu_dtypes("cuda")
    assert {torch.float32, torch.bfloat16} <= dtypes, problems
    net = instantiate(compose(SMALL).model.net).eval()
    plain = prepare_for_inference(copy.deepcopy(net), "cuda", FastPath())
    fused = prepare_for_inference(copy.deepcopy(net), "cuda", FastPath(fuse_conv_relu=True))
    assert not any(isinstance(m, ConvReLU) for m in plain.modules())
    assert sum(isinstance(m, ConvReLU) for m in fused.modules()) > 20
    images = torch.randn(4, 3, 64, 64, device="cuda").contiguous(
        memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16):
        expected, got = plain(images), fused(images)
    # bias and ReLU in the epilogue round once where the plain path rounds the convolution
    # before adding the bias: bf16's own error, not more
    assert relative_error(got, expected) < 2e-2
    assert (got.argmax(1) == expected.argmax(1)).float().mean() > 0.95  # random weights: ties
