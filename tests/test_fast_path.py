"""The fast path's options reach the code that acts on them, and stay off where they cost.

GPU-only branches (channels_last, cuDNN autotuning, fused AdamW) are exercised on the CPU by
pretending the trainer's device is CUDA; their speed is measured by ``faceparse.bench``.
"""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torch import nn
from torch.utils.data import DataLoader

from faceparse.data.datamodule import FaceDataModule
from faceparse.data.synthetic import SyntheticFaces
from faceparse.fast_path import FastPath, compile_regions, inference_bf16
from faceparse.hardware import CpuPolicy
from faceparse.inference import predict, prepare_for_inference
from faceparse.training import FaceParsingModule
from faceparse.training.optim import build_optimizer, param_groups

pytestmark = pytest.mark.usefixtures("torch_single_thread")
SMALL = ["cnn.arch=vgg11_bn", "vit.size=small", "vit.random_init=true",
         "decoder.decoder_channels=32"]


@pytest.fixture
def module(compose) -> FaceParsingModule:
    return instantiate(compose(SMALL).model)


def attach(module: FaceParsingModule, device: str, precision: str = "32-true") -> None:
    """A stand-in trainer: ``setup`` only asks it for the root device and the precision."""
    module._trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)),
                                      precision=precision)


def conv_weights(module: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in module.modules() if isinstance(m, nn.Conv2d)]


def test_config_options_reach_the_module(compose) -> None:
    cfg = compose([*SMALL, "fast_path.compile=true", "fast_path.channels_last=false",
                   "fast_path.cudnn_benchmark=false"])
    module = instantiate(cfg.model)
    assert module.fast_path == FastPath(channels_last=False, cudnn_benchmark=False, compile=True)
    assert cfg.optimizer.fused is True  # decided from the trainer's accelerator and precision
    assert compose([*SMALL, "trainer.precision=16-mixed"]).optimizer.fused is False


def cpu_policy_says(monkeypatch: pytest.MonkeyPatch, bf16: bool, channels_last: bool) -> None:
    """Pin the CPU policy (its probes time this machine, which a test must not depend on)."""
    policy = CpuPolicy(bf16=bf16, channels_last=channels_last, reason="test")
    monkeypatch.setattr("faceparse.fast_path.cpu_policy", lambda: policy)


def test_cpu_setup_changes_nothing_where_nhwc_does_not_pay(
    module: FaceParsingModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu_policy_says(monkeypatch, bf16=False, channels_last=False)
    benchmark = torch.backends.cudnn.benchmark
    attach(module, "cpu")
    module.setup("fit")
    assert all(w.is_contiguous() for w in conv_weights(module.net))
    assert torch.backends.cudnn.benchmark == benchmark
    assert all(part._compiled_call_impl is None for part in module.net.children())


@pytest.mark.parametrize(("option", "policy", "expected"), [
    ("auto", True, True), ("auto", False, False), (True, False, True), (False, True, False),
])
def test_cpu_channels_last_follows_the_cpu_policy_unless_forced(
    monkeypatch: pytest.MonkeyPatch, option: bool | str, policy: bool, expected: bool
) -> None:
    cpu_policy_says(monkeypatch, bf16=False, channels_last=policy)
    net = prepare_for_inference(nn.Conv2d(3, 5, 3), "cpu", FastPath(channels_last=option))
    assert net.weight.is_contiguous(memory_format=torch.channels_last) == expected


def test_cpu_inference_runs_bf16_exactly_where_the_policy_says(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    net = prepare_for_inference(Logits(), "cpu", FastPath(channels_last=False))
    seen = []
    net.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    for bf16 in (True, False):
        cpu_policy_says(monkeypatch, bf16=bf16, channels_last=False)
        assert inference_bf16("cpu") is bf16
        predict(net, torch.randn(1, 3, 8, 8))
    assert seen == [torch.bfloat16, torch.float32]
    assert predict(net, torch.randn(1, 3, 8, 8), bf16=False).labels.shape == (1, 8, 8)


def test_a_bad_channels_last_value_is_refused() -> None:
    with pytest.raises(ValueError, match="fast_path.channels_last=sometimes: use auto, true"):
        FastPath(channels_last="sometimes")
    for option in ("compile", "fold_batchnorm", "cudnn_benchmark", "reuse_cpu_memory"):
        with pytest.raises(ValueError, match=f"fast_path.{option}=no: use true or false"):
            FastPath(**{option: "no"})  # bool("no") would switch it on


def test_cuda_setup_turns_on_channels_last_and_cudnn_benchmark(
    module: FaceParsingModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    attach(module, "cuda")
    module.setup("fit")
    assert torch.backends.cudnn.benchmark
    weights = [w for w in conv_weights(module.net) if w.shape[-1] > 1 or w.shape[-2] > 1]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)


def test_compile_option_compiles_each_part_once_in_place(
    module: FaceParsingModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = list(module.state_dict())
    module.fast_path = FastPath(compile=True)
    compiled = []
    original = nn.Module.compile
    monkeypatch.setattr(nn.Module, "compile",
                        lambda self, *a, **k: compiled.append(self) or original(self, *a, **k))
    attach(module, "cpu")
    module.setup("fit")
    module.setup("test")
    assert compiled == list(module.net.children())  # once each, although setup ran twice
    assert all(part._compiled_call_impl is not None for part in module.net.children())
    assert list(module.state_dict()) == keys


def test_compile_mode_reaches_torch_compile(
    module: FaceParsingModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    modes = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: modes.append(k["mode"]))
    module.fast_path = FastPath(compile=True, compile_mode="max-autotune-no-cudagraphs")
    attach(module, "cpu")
    module.setup("fit")
    assert modes == ["max-autotune-no-cudagraphs"] * len(list(module.net.children()))


@pytest.mark.parametrize(("options", "message"), [
    ({"compile": True, "compile_mode": "fastest"}, "use one of default, reduce-overhead"),
    ({"compile_mode": "max-autotune"}, "no effect without fast_path.compile=true"),
    ({"compile": True, "compile_scope": "layers"}, "use one of parts, blocks"),
    ({"compile_scope": "blocks"}, "no effect without fast_path.compile=true"),
])
def test_a_bad_compile_mode_is_refused(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FastPath(**options)


@pytest.mark.parametrize(("mode", "device", "hooked"), [
    ("reduce-overhead", "cuda", True), ("max-autotune", "cuda", True),
    ("max-autotune-no-cudagraphs", "cuda", False), ("reduce-overhead", "cpu", False),
])
def test_cuda_graph_modes_start_a_graph_step_per_call_and_hand_out_copies(
    monkeypatch: pytest.MonkeyPatch, mode: str, device: str, hooked: bool
) -> None:
    """A CUDA graph replay overwrites its last outputs: kept logits must be copies."""
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: None)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    steps = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: steps.append(1))
    shared = torch.zeros(2, 3)

    class Replayed(nn.Module):  # returns the same storage every call, as a replay does
        def __init__(self) -> None:
            super().__init__()
            self.part = nn.Identity()

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
            shared.copy_(x)
            return shared, [shared]

    net = FastPath(compile=True, compile_mode=mode, channels_last=False).apply(Replayed(), device)
    first, (first_aux,) = net(torch.ones(2, 3))
    net(torch.full((2, 3), 7.0))
    assert len(steps) == (2 if hooked else 0)
    assert first.eq(1).all() == hooked and first_aux.eq(1).all() == hooked
    FastPath(compile=True, compile_mode=mode, channels_last=False).apply(net, device)
    net(torch.ones(2, 3))
    assert len(steps) == (3 if hooked else 0)  # hooked once, however often applied


@pytest.mark.parametrize(("accelerator", "precision", "fused"), [
    ("cpu", "32-true", True), ("cpu", "bf16-mixed", True), ("gpu", "bf16-mixed", True),
    ("gpu", "32-true", True),
    # fp16 with a gradient scaler: Lightning cannot clip for a fused step, so not fused
    ("gpu", "16-mixed", False), ("cpu", "16-mixed", False),
])
def test_fused_adamw_wherever_no_gradient_scaler_is_in_play(
    compose, monkeypatch: pytest.MonkeyPatch, accelerator: str, precision: str, fused: bool
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = compose([*SMALL, f"trainer.accelerator={accelerator}",
                   f"trainer.precision={precision}"])
    assert cfg.optimizer.fused is fused
    module = instantiate(cfg.model)
    optimizer = build_optimizer(module.optimizer_factory, module)
    assert bool(optimizer.defaults["fused"]) is fused


def test_parts_declare_their_parameter_groups(compose) -> None:
    """A fine-tuned ViT tail learns at ``lr_scale`` x the rate; the frozen rest never enters
    the optimizer; every other trainable parameter trains at the base rate."""
    module = instantiate(compose([*SMALL, "vit.finetune_blocks=2", "vit.lr_scale=0.25",
                                  "optimizer.lr=1e-3"]).model)
    groups = param_groups(module)
    assert [g["lr_scale"] for g in groups] == [1.0, 0.25]
    vit = module.net.encoder.vit
    tuned = {id(p) for p in vit.parameters() if p.requires_grad}
    assert {id(p) for p in groups[1]["params"]} == tuned
    assert not tuned & {id(p) for p in groups[0]["params"]}
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    optimizer = build_optimizer(module.optimizer_factory, module)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3, 2.5e-4])


def test_frozen_vit_keeps_no_activations_and_uses_sdpa(module: FaceParsingModule) -> None:
    module.train()
    vit = module.net.encoder.vit
    assert not vit.model.training
    (out,) = vit(torch.randn(1, 3, 32, 32))
    assert out.grad_fn is None and not out.requires_grad
    assert all(block.attn.fused_attn for block in vit.model.blocks)


class Logits(nn.Module):
    """A stand-in net: a 1x1 conv giving 5-class logits at the input's resolution."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_predict_gives_argmax_labels_without_softmax(monkeypatch: pytest.MonkeyPatch) -> None:
    net = prepare_for_inference(Logits())
    images = torch.randn(5, 3, 16, 16)
    calls = []
    softmax = torch.Tensor.softmax
    monkeypatch.setattr(torch.Tensor, "softmax", lambda t, *a, **k: calls.append(1)
                        or softmax(t, *a, **k))
    out = predict(net, images, batch_size=2)
    assert not calls and out.probs is None
    assert out.labels.dtype == torch.uint8 and out.labels.shape == (5, 16, 16)
    with torch.no_grad():
        assert torch.equal(out.labels.long(), net(images).argmax(1))


def test_predict_gives_probabilities_when_asked() -> None:
    net = prepare_for_inference(Logits())
    out = predict(net, torch.randn(3, 3, 8, 8), batch_size=2, probs=True)
    assert out.probs.shape == (3, 5, 8, 8)
    torch.testing.assert_close(out.probs.sum(1), torch.ones(3, 8, 8))
    assert torch.equal(out.probs.argmax(1), out.labels.long())


def test_prepare_for_inference_stays_plain_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu_policy_says(monkeypatch, bf16=False, channels_last=False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    net = prepare_for_inference(Logits().train(), "cpu", FastPath(cudnn_benchmark=True))
    assert not net.training and net.conv.weight.is_contiguous()
    assert not torch.backends.cudnn.benchmark  # a process-wide CUDA setting: left alone


@pytest.mark.parametrize(("workers", "expected"), [(0, None), (2, 4)])
def test_prefetch_factor_reaches_the_loader(workers: int, expected: int | None) -> None:
    datamodule = FaceDataModule(SyntheticFaces, image_size=32, num_workers=workers,
                                prefetch_factor=4)
    datamodule.datasets["train"] = datamodule.make_dataset("train")
    loader = datamodule.train_dataloader()
    assert loader.prefetch_factor == expected and loader.persistent_workers == (workers > 0)


def test_fused_adamw_trains_with_gradient_clipping_under_bf16(module: FaceParsingModule) -> None:
    """Lightning refuses to clip for a fused optimizer under mixed precision (an fp16 scaler
    would leave the gradients scaled); bf16 has no scaler, so the module clips itself. The
    default GPU setup (bf16-mixed, fused AdamW, gradient_clip_val 1.0) depends on this."""
    module.optimizer_factory = partial(torch.optim.AdamW, lr=1e-3, fused=True)
    module.scheduler_factory = None
    batch = {"image": torch.randn(2, 3, 32, 32),
             "mask": torch.randint(0, module.scheme.num_classes, (2, 32, 32), dtype=torch.uint8)}
    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", gradient_clip_val=1.0,
                        max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, DataLoader([batch], batch_size=None))
    assert trainer.optimizers[0].defaults["fused"] and trainer.global_step == 1


@pytest.mark.parametrize(("algorithm", "check"), [
    ("norm", lambda grads: torch.linalg.vector_norm(torch.cat(grads)) <= 1.0 + 1e-5),
    ("value", lambda grads: torch.cat(grads).abs().max() <= 1.0),
])
def test_module_clips_for_a_fused_optimizer(module: FaceParsingModule, algorithm: str,
                                            check) -> None:
    module._trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=None))
    params = [p for p in module.net.decoder.parameters()]
    for p in params:
        p.grad = torch.full_like(p, 10.0)
    optimizer = torch.optim.AdamW(params, fused=True)
    module.configure_gradient_clipping(optimizer, 1.0, algorithm)
    assert check([p.grad.flatten() for p in params])


def test_block_scope_compiles_each_vit_block_and_every_other_part_whole(
    module: FaceParsingModule,
) -> None:
    net = module.net
    eva = net.encoder.vit.model
    regions = compile_regions(net, "blocks")
    assert regions == [net.encoder.cnn, *eva.blocks, net.encoder.fusion, net.decoder]
    assert compile_regions(net, "parts") == [net.encoder, net.decoder]
    # nothing is compiled twice (a region inside another), and only the ViT's glue is left
    covered = {id(p) for region in regions for p in region.parameters()}
    assert len(covered) == sum(len(list(r.parameters())) for r in regions)
    glue = {id(p) for name, p in eva.named_parameters() if not name.startswith("blocks.")}
    assert covered | glue == {id(p) for p in net.parameters()}


def test_block_scope_reaches_torch_compile_from_the_config(
    compose, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = instantiate(compose([*SMALL, "fast_path.compile=true",
                                  "fast_path.compile_scope=blocks"]).model)
    compiled = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    attach(module, "cpu")
    module.setup("fit")
    assert compiled == compile_regions(module.net, "blocks")
    assert len(compiled) == len(module.net.encoder.vit.model.blocks) + 3


@pytest.mark.slow
def test_block_scope_compiles_for_real_and_keeps_the_features(compose) -> None:
    """The ViT's own loop calls its blocks, each compiled, between eager glue (RoPE, norm)."""
    vit = instantiate(compose(SMALL).model.net).encoder.vit.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        (eager,) = vit(x)
    torch._dynamo.reset()
    FastPath(compile=True, compile_scope="blocks", channels_last=False).apply(vit, "cpu")
    with torch.inference_mode():
        (compiled,) = vit(x)
    assert all(block._compiled_call_impl is not None for block in vit.model.blocks)
    assert vit.model._compiled_call_impl is None  # the glue stays eager
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    torch._dynamo.reset()
