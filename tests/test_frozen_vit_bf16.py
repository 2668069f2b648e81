"""A frozen ViT stored in bf16: where training and inference do it, and what checkpoints hold."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torch import nn
from torch.utils.data import DataLoader

from faceparse.bench.census import emulated_cuda, to_fake_cuda
from faceparse.fast_path import FastPath
from faceparse.models.dinov3 import DinoVitEncoder, LayerNormInInputDtype, frozen_vits_to_bf16
from faceparse.training import FaceParsingModule

pytestmark = pytest.mark.usefixtures("torch_single_thread")
SMALL = ["cnn.arch=vgg11_bn", "vit.size=small", "vit.random_init=true",
         "decoder.decoder_channels=32"]


def vit_dtypes(module: FaceParsingModule) -> set[torch.dtype]:
    return {p.dtype for p in module.net.encoder.vit.model.parameters()}


def fit(module: FaceParsingModule, steps: int, ckpt_path: Path | None = None) -> L.Trainer:
    """``steps`` bf16-mixed training steps on one random batch, as ``faceparse.train`` runs."""
    torch.manual_seed(0)
    batch = {"image": torch.randn(2, 3, 32, 32),
             "mask": torch.randint(0, module.scheme.num_classes, (2, 32, 32), dtype=torch.uint8)}
    module.scheduler_factory = None
    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", max_steps=steps,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, DataLoader([batch] * steps, batch_size=None), ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize(("option", "precision", "stored"), [
    ("auto", "bf16-mixed", True), ("auto", "bf16-true", True), ("auto", "32-true", False),
    (False, "bf16-mixed", False), (True, "32-true", True),
])
def test_training_stores_the_frozen_vit_in_bf16_where_it_trains_in_bf16(
    compose, option: bool | str, precision: str, stored: bool
) -> None:
    module = instantiate(compose(SMALL).model)
    module.fast_path = FastPath(frozen_vit_bf16=option, channels_last=False)
    module._trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")),
                                      precision=precision)
    module.setup("fit")
    assert vit_dtypes(module) == ({torch.bfloat16} if stored else {torch.float32})
    # the trained parts never change dtype
    assert {p.dtype for p in module.net.decoder.parameters()} == {torch.float32}


def test_a_bad_option_is_refused_for_training_too() -> None:
    with pytest.raises(ValueError, match="frozen_vit_bf16"):
        FastPath(frozen_vit_bf16="yes").wants_frozen_vit_bf16_in_training("bf16-mixed")


def test_a_bf16_stored_vit_saves_fp32_weights_rounded_to_bf16(compose) -> None:
    net = instantiate(compose(SMALL).model.net)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert frozen_vits_to_bf16(net) == 1
    frozen_vits_to_bf16(net)  # a second call changes nothing (one save hook, not two)
    saved = net.state_dict()
    assert saved.keys() == before.keys()
    assert {v.dtype for v in saved.values() if v.is_floating_point()} == {torch.float32}
    weight = "encoder.vit.model.blocks.0.attn.qkv.weight"
    assert torch.equal(saved[weight], before[weight].bfloat16().float())
    assert not torch.equal(saved[weight], before[weight])  # rounded: documented, not hidden
    # the net still holds bf16 after saving, and loads an fp32 file into bf16 storage
    net.load_state_dict(before)
    vit = net.encoder.vit
    assert vit.model.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert torch.equal(vit.model.blocks[0].attn.qkv.weight, before[weight].bfloat16())


def test_bf16_training_keeps_fp32_checkpoints_and_resumes_into_a_bf16_vit(
    compose, tmp_path: Path
) -> None:
    module = instantiate(compose(SMALL).model)
    module.fast_path = FastPath(channels_last=False)
    original = module.net.encoder.vit.model.blocks[0].mlp.fc1.weight.detach().clone()
    decoder_before = next(module.net.decoder.parameters()).detach().clone()
    trainer = fit(module, steps=1)
    assert vit_dtypes(module) == {torch.bfloat16}
    assert not torch.equal(next(module.net.decoder.parameters()), decoder_before)  # it trained
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=False)["state_dict"]
    key = "net.encoder.vit.model.blocks.0.mlp.fc1.weight"
    assert state[key].dtype == torch.float32
    assert torch.equal(state[key], original.bfloat16().float())

    resumed = instantiate(compose(SMALL).model)
    resumed.fast_path = FastPath(channels_last=False)
    trainer = fit(resumed, steps=2, ckpt_path=path)
    assert trainer.global_step == 2
    assert vit_dtypes(resumed) == {torch.bfloat16}
    assert torch.equal(resumed.net.encoder.vit.model.blocks[0].mlp.fc1.weight,
                       original.bfloat16())


def test_trained_vit_blocks_stay_fp32_and_learn_beside_a_bf16_frozen_rest(compose) -> None:
    module = instantiate(compose([*SMALL, "vit.finetune_blocks=1"]).model)
    module.fast_path = FastPath(channels_last=False)
    vit = module.net.encoder.vit.model
    tuned_before = vit.blocks[-1].mlp.fc1.weight.detach().clone()
    fit(module, steps=1)
    assert vit.blocks[0].mlp.fc1.weight.dtype == torch.bfloat16
    assert vit.blocks[-1].mlp.fc1.weight.dtype == torch.float32
    assert not torch.equal(vit.blocks[-1].mlp.fc1.weight, tuned_before)
    # the trained block's norms stay plain LayerNorms, which autocast runs as before
    assert type(vit.blocks[-1].norm1) is not LayerNormInInputDtype
    assert type(vit.blocks[0].norm1) is LayerNormInInputDtype


def test_frozen_layer_norms_run_in_bf16_with_their_own_parameters() -> None:
    """CUDA autocast would run the bf16 ViT's LayerNorms in fp32; the CPU already did not."""
    torch.manual_seed(0)
    plain = DinoVitEncoder(size="small", random_init=True)
    stored = copy.deepcopy(plain)
    weights = {n: m.weight for n, m in stored.model.named_modules()
               if isinstance(m, nn.LayerNorm)}
    keys = list(stored.state_dict())
    stored.store_frozen_weights(torch.bfloat16)
    norms = {n: m for n, m in stored.model.named_modules() if isinstance(m, nn.LayerNorm)}
    assert set(norms) == set(weights) and len(norms) == 25  # 2 per block + the final norm
    assert all(type(m) is LayerNormInInputDtype for m in norms.values())
    assert all(m.weight is weights[n] for n, m in norms.items())  # the same parameters
    assert not any(m.training for m in norms.values())  # a frozen ViT stays in eval mode
    assert list(stored.state_dict()) == keys
    # the same bf16 weights with the norms left alone: on a CPU the maps are the same
    for p in plain.parameters():
        p.data = p.data.to(torch.bfloat16)
    plain.compute_dtype = torch.bfloat16
    image = torch.randn(2, 3, 64, 64)
    assert torch.equal(stored(image)[0], plain(image)[0])
    norm = LayerNormInInputDtype.like(nn.LayerNorm(8).to(torch.bfloat16))
    with emulated_cuda(torch.bfloat16):
        to_fake_cuda(norm)
        tokens = torch.empty(2, 5, 8, device="cuda", dtype=torch.bfloat16)
        assert norm(tokens).dtype == torch.bfloat16
        assert nn.functional.layer_norm(tokens, (8,)).dtype == torch.float32  # what it avoids
        assert norm(tokens.float()).dtype == torch.float32  # fp32 tokens: autocast decides


def test_a_bf16_vit_keeps_its_zero_key_bias_in_bf16() -> None:
    """An fp32 key bias turned each block's bias concatenation fp32, cast back by the matmul."""
    stored = DinoVitEncoder(size="small", random_init=True)
    keys = list(stored.state_dict())
    stored.store_frozen_weights(torch.bfloat16)
    attention = stored.model.blocks[0].attn
    assert attention.k_bias.dtype == attention.q_bias.dtype == torch.bfloat16
    assert not attention.k_bias.any() and list(stored.state_dict()) == keys
    tuned = DinoVitEncoder(size="small", random_init=True, finetune_blocks=1)
    tuned.store_frozen_weights(torch.bfloat16)
    assert tuned.model.blocks[-1].attn.k_bias.dtype == torch.float32  # trains in fp32
    assert tuned.model.blocks[0].attn.k_bias.dtype == torch.bfloat16


def test_an_fp32_parser_keeps_the_frozen_vit_in_fp32(ckpt, monkeypatch) -> None:
    """``precision=32-true`` is fp32 all through, even where bf16 is the faster path: the
    ViT would otherwise be stored and run in bf16 behind the user's back."""
    from faceparse import hardware
    from faceparse.inference import Parser, load_model
    from faceparse.models.dinov3 import has_bf16_frozen_vit

    monkeypatch.setenv(hardware.FORCE_BF16, "1")  # a CPU whose policy chose bf16
    hardware.decided_cpu_policy.cache_clear()
    hardware.cpu_policy.cache_clear()
    try:
        fp32 = Parser.from_checkpoint(ckpt, device="cpu", precision="32-true")
        assert not has_bf16_frozen_vit(fp32.model.net) and fp32.autocast_dtype is None
        auto = Parser.from_checkpoint(ckpt, device="cpu")
        assert has_bf16_frozen_vit(auto.model.net)  # auto: bf16, its ViT stored in bf16
        with pytest.raises(ValueError, match="precision=32-true, but the loaded model's "
                                             "frozen ViT is stored in bf16"):
            Parser(load_model(ckpt, device="cpu"), precision="32-true")
    finally:
        hardware.decided_cpu_policy.cache_clear()
        hardware.cpu_policy.cache_clear()
