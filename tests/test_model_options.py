"""Model and loss options are checked where they are built: one error naming the option,
never a value that trains wrongly (a negative ViT learning rate, a 0/0 loss) or a traceback
from deep inside torch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from faceparse.instantiation import instantiate_option
from faceparse.losses import DeepSupervisionLoss
from faceparse.models.dinov3 import DinoVitEncoder

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.mark.parametrize(("override", "message"), [
    ("decoder.decoder_channels=-16", "decoder.decoder_channels=-16: the decoder's width"),
    ("decoder.decoder_channels=0", "decoder.decoder_channels=0: the decoder's width"),
    ("decoder.dropout=1.5", r"decoder.dropout=1.5: a drop probability in \[0, 1\)"),
    ("fusion=cross_attn fusion.op.num_heads=0", "fusion.op.num_heads=0: the number of"),
    ("fusion=concat fusion.op.out_channels=0", "fusion.op.out_channels=0: the fused map"),
    ("cnn.arch=alexnet", "cnn.arch=alexnet: not a torchvision VGG"),
    ("vit.layers=[1.5]", r"vit.layers=\[1.5\]: a non-empty list of block indices"),
    ("vit.layers=[]", r"vit.layers=\[\]: a non-empty list"),
    ("vit.layers=[12]", r"vit.layers=\[12\]: \[12\] outside the 12-block ViT-small"),
    ("vit.lr_scale=-1", "vit.lr_scale=-1: the ViT's learning rate is lr times this"),
    ("vit.lr_scale=0", "vit.lr_scale=0: "),
    ("vit.finetune_blocks=13", "vit.finetune_blocks=13: the ViT-small has 12 blocks"),
    ("vit.frozen=false vit.layers=[5]",
     r"vit.frozen=false trains the whole ViT, but vit.layers=\[5\] stops it at block 5: "
     r"blocks 6-11 would never run or learn"),
    ("loss.aux_weight=-1", "loss.aux_weight=-1: the auxiliary loss' weight"),
    ("loss.dice_weight=-2", "loss.dice_weight=-2: the Dice term's weight"),
    ("loss.class_weights=[0,0,0,0,0,0,0,0,0,0,0]", "all zero, the loss would be 0/0"),
    ("loss.class_weights=[1,1,1,1,1,1,1,1,1,1,-1]", "loss.class_weights=-1: each class"),
])
def test_a_bad_model_option_is_one_error_naming_it(compose, tiny, override: str,
                                                   message: str) -> None:
    cfg = compose([*tiny, *override.split()])
    with pytest.raises(ValueError, match=message):
        instantiate_option(cfg.model)


def test_the_vit_stops_at_its_deepest_tapped_block() -> None:
    """Blocks after the deepest tap cannot change the output: they are not run."""
    vit = DinoVitEncoder("small", layers=[5], random_init=True)
    calls: list[int] = []
    for index, block in enumerate(vit.model.blocks):
        block.register_forward_hook(lambda *_, i=index: calls.append(i))
    vit(torch.rand(1, 3, 32, 32))
    assert calls == list(range(6))


def test_valid_loss_weights_are_kept() -> None:
    loss = DeepSupervisionLoss(aux_weight=0, class_weights=[0, 1, 2], dice_weight=0.5)
    assert (loss.aux_weight, loss.dice_weight) == (0.0, 0.5)
    assert loss.class_weights.tolist() == [0.0, 1.0, 2.0]


@pytest.mark.slow  # 8 s or more on 2 cores: in CI's slow suite (pytest -m slow)
def test_a_resolver_refusal_is_one_error_line(tmp_path) -> None:
    """``FACEPARSE_CPU_BF16=2`` is read by the ``trainer.precision`` resolver: its message,
    not OmegaConf's InterpolationResolutionError traceback, and no run folder."""
    env = {**os.environ, "FACEPARSE_CPU_BF16": "2"}
    done = subprocess.run([sys.executable, "-m", "faceparse.train",
                           f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: FACEPARSE_CPU_BF16='2': use 1 (or true, yes, on), 0 (or false, no, off) or auto")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("widths", "message"), [
    ([0, 16, 32, 64], r"encoder.pyramid_channels=\[0,16,32,64\]: each width is a whole number"),
    ([-4, 16, 32, 64], "each width is a whole number >= 1"),
    ([16, 32], r"encoder.pyramid_channels=\[16,32\]: 4 widths, one per stride below the "
               r"ViT's 16, e.g. \[64,128,256,512\]"),
    ("abc", "4 widths"),
])
def test_vit_pyramid_widths_are_refused_before_the_first_step(widths, message: str) -> None:
    """A width of 0 built a net that crashed in its first step with a torch traceback."""
    from faceparse.models.fusion import VitPyramidEncoder

    vit = DinoVitEncoder(size="small", random_init=True)
    with pytest.raises(ValueError, match=message):
        VitPyramidEncoder(vit, pyramid_channels=widths)


@pytest.mark.parametrize(("batch", "message"), [
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "expected a float32 .* got torch.uint8"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.float64), "got torch.float64"),
    (torch.zeros(0, 3, 32, 32), r"B >= 1, got \(0, 3, 32, 32\)"),
])
def test_a_raw_or_empty_batch_is_refused_by_name(batch: torch.Tensor, message: str) -> None:
    import functools

    from faceparse.models.decoder import CoarseToFineDecoder
    from faceparse.models.faceparser import FaceParser
    from faceparse.models.fusion import VitPyramidEncoder

    vit = DinoVitEncoder(size="small", random_init=True)
    net = FaceParser(VitPyramidEncoder(vit, pyramid_channels=[8, 8, 8, 8]),
                     functools.partial(CoarseToFineDecoder, decoder_channels=16), num_classes=3)
    with pytest.raises(ValueError, match=message):
        net(batch)


def test_a_float64_net_takes_float64_batches_and_numpy_widths() -> None:
    """The dtype check refuses a batch the net cannot take, not float64 as such."""
    import functools

    import numpy as np

    from faceparse.models.decoder import CoarseToFineDecoder
    from faceparse.models.faceparser import FaceParser
    from faceparse.models.fusion import VitPyramidEncoder

    vit = DinoVitEncoder(size="small", random_init=True)
    widths = list(np.array([8, 8, 8, 8]))  # numpy ints, as a config built in Python has
    net = FaceParser(VitPyramidEncoder(vit, pyramid_channels=widths),
                     functools.partial(CoarseToFineDecoder, decoder_channels=16),
                     num_classes=3).double().eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 32, 32, dtype=torch.float64))
    assert out.dtype == torch.float64 and out.shape == (1, 3, 32, 32)
