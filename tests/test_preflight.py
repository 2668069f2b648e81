"""Option mistakes that used to fail late are refused before any work, naming the option.

Before: a misspelt ``optimized_metric`` trained a whole epoch and then failed in Lightning;
class weights of the wrong length, ``trainer.max_epochs=abc`` or a time-budgeted run with
the cosine schedule were tracebacks from torch or Lightning; a refused optimizer value or
trainer/callback option left a run folder with a full-size ``on_exception.ckpt``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from faceparse.train import train
from faceparse.training.preflight import check_training_options

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("overrides, message", [
    (["optimized_metric=val/f1mean"],
     r"optimized_metric=val/f1mean: training logs no such metric; use one of val/f1_mean, "
     r"val/miou, val/pixel_acc, val/loss, train/loss, val/f1/<class> .*\(background, skin"),
    (["callbacks.model_checkpoint.monitor=val/iou/noze"],
     "callbacks.model_checkpoint.monitor=val/iou/noze: training logs no such metric"),
    (["loss.class_weights=[1.0,2.0,3.0]"],
     r"loss.class_weights \(3 weights\): data.labels=ourface has 11 classes \(background, "
     r".*python -m faceparse.stats data=synthetic data.labels=ourface counts them on your"),
    (["trainer.max_epochs=abc"], "trainer.max_epochs=abc: the number of epochs is a whole"),
    (["trainer.max_epochs=1.5"], "trainer.max_epochs=1.5: the number of epochs is a whole"),
    (["trainer.max_epochs=-2"], "trainer.max_epochs=-2: the number of epochs is a whole"),
    (["trainer.max_steps=ten"], "trainer.max_steps=ten: the number of optimizer steps"),
    (["trainer.max_epochs=-1", "trainer.max_time=00:00:00:20"],
     r"trainer.max_epochs=-1 and trainer.max_steps=-1 \(the run stops on trainer.max_time\) "
     r"leave the learning-rate schedule no length.*scheduler=none"),
    # Hydra passes no/off as text and bool("no") is True: refused, never read as on
    (["train=no"], "train=no: use true or false"),
    (["test=off"], "test=off: use true or false"),
    (["trust_pickle=no"], "trust_pickle=no: use true or false"),
])
def test_late_failing_options_are_refused_before_anything_is_written(
        compose, tiny, tmp_path: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        train(compose([*tiny, *overrides], output_dir=tmp_path))
    assert list(tmp_path.iterdir()) == []  # not even the config


@pytest.mark.parametrize("overrides", [
    ["optimized_metric=val/f1/skin", "callbacks.model_checkpoint.mode=max"],
    ["optimized_metric=val/loss", "callbacks.model_checkpoint.mode=min"],
    ["loss.class_weights=[1,1,1,1,1,1,1,1,1,1,2.5]"],
    ["trainer.max_epochs=-1", "trainer.max_steps=4"],  # a step budget: the schedule's length
    ["trainer.max_epochs=-1", "trainer.max_time=00:00:00:20", "scheduler=none"],
    ["trainer.max_epochs=0"],  # tests the untrained model
    ["train=false", "optimized_metric=anything"],  # no training, nothing monitored
])
def test_sound_options_pass(compose, tiny, overrides: list[str]) -> None:
    check_training_options(compose([*tiny, *overrides]))


def command(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "faceparse.train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # a whole command, end to end: in CI's slow suite
def test_refusals_met_while_building_are_one_line_and_leave_no_run_folder(
        tiny, tmp_path: Path) -> None:
    """As typed: the optimizer's own refusal (met once the model exists), and Lightning's
    MisconfigurationException from a callback or the trainer, in one ``error:`` line naming
    the option; the run folder Hydra made for the command goes again."""
    cpu_tiny = [o for o in tiny if not o.startswith("trainer.accelerator=")]
    cases = {  # overrides -> the error line's start
        ("optimizer.lr=-1",): "error: optimizer: Invalid learning rate: -1",
        ("callbacks.model_checkpoint.mode=maximum",):
            "error: callbacks.model_checkpoint: `mode` can be min, max but got maximum",
    }
    if not torch.cuda.is_available():
        cases[("trainer=gpu",)] = "error: trainer: "
    started = {case: command(*cpu_tiny, *case, f"hydra.run.dir={tmp_path / str(i) / 'run'}")
               for i, case in enumerate(cases)}
    for case, process in started.items():
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 1, (case, stderr[-3000:])
        errors = [line for line in stderr.splitlines() if "error" in line.lower()]
        assert len(errors) == 1 and errors[0].startswith(cases[case]), (case, stderr[-3000:])
        assert "Traceback" not in stderr and "Error in call to target" not in stderr, case
    assert list(tmp_path.iterdir()) == []  # no run folder, no on_exception.ckpt


@pytest.mark.parametrize("override", ["cnn.freeze_norm=no", "cnn.pretrained=off",
                                      "vit.frozen=no", "decoder.attention_refinement=no",
                                      "data.pin_memory=no", "fast_path.compile=no"])
def test_on_off_options_typed_as_words_are_refused(compose, tiny, tmp_path: Path,
                                                   override: str) -> None:
    """A model or data switch typed ``no`` would build the net with it on: refused, named."""
    with pytest.raises(ValueError, match=f"{override}: use true or false"):
        train(compose([*tiny, override], output_dir=tmp_path))


def test_the_class_weights_hint_counts_the_runs_own_data(compose) -> None:
    """stats' default data is synthetic faces: the hint names the run's dataset and root."""
    from faceparse.training.preflight import stats_hint

    cfg = compose(["data=lapa", "data.root=/data/LaPa", "data.labels=lapa"])
    assert stats_hint(cfg.data) == ("python -m faceparse.stats data=lapa data.root=/data/LaPa "
                                    "data.labels=lapa")


def test_an_unknown_wandb_option_is_refused_before_anything_is_built(compose, tiny,
                                                                    tmp_path: Path) -> None:
    """It was wandb's TypeError traceback, after the data and the model were built."""
    cfg = compose([*tiny, "logger=wandb", "+logger.wandb.tag=[x]"], output_dir=tmp_path)
    with pytest.raises(ValueError, match="logger.wandb.tag: not an option of the W&B logger"):
        train(cfg)
    assert not (tmp_path / "wandb").exists()
    ok = compose([*tiny, "logger=wandb", "+logger.wandb.notes=try"], output_dir=tmp_path)
    from faceparse.training.preflight import check_wandb_options

    check_wandb_options(ok.logger)  # wandb.init's own options pass


@pytest.mark.parametrize(("override", "message"), [
    ("seed=1.5", "seed=1.5: the random seed is a whole number >= 0"),
    ("seed=null", "seed=null: the random seed"),
    ("logger=wandb +logger.wandb.settings={}", "logger.wandb.settings: not an option of the W&B "
                                               "logger"),
    ("data.image_size=-32", "data.image_size=-32: the square side in pixels"),
    ("data.image_size=0", "data.image_size=0: the square side"),
    ("data.num_workers=-1", "data.num_workers=-1: the loader processes"),
    ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1: the largest gradient norm"),
    ("trainer=ddp trainer.accelerator=cpu", "trainer.sync_batchnorm=true needs CUDA GPUs .* "
                                            "use trainer=ddp_cpu"),
])
def test_numbers_torch_would_take_wrongly_are_refused_first(compose, tiny, tmp_path: Path,
                                                            override: str, message: str) -> None:
    """Before: seed 1.5 trained as 1, -32 px was albumentations' dump, -1 workers a kept
    failed folder, clipping at -1 gradient ascent, SyncBatchNorm on CPU a DDP crash."""
    cfg = compose([*tiny, *override.split()], output_dir=tmp_path / "run")
    with pytest.raises(ValueError, match=message):
        check_training_options(cfg)


def test_a_negative_clip_value_never_flips_gradients() -> None:
    from faceparse.training.optim import clip_gradients

    p = torch.nn.Parameter(torch.zeros(3))
    for algorithm in (None, "value"):
        p.grad = torch.tensor([3.0, 4.0, 0.0])
        clip_gradients([p], -1.0, algorithm)
        torch.testing.assert_close(p.grad, torch.tensor([3.0, 4.0, 0.0]))


@pytest.mark.parametrize(("encoder", "override", "warned"), [
    ("cnn", "vit.size=base", "vit.size=base is not used: encoder faceparse.models.VggEncoder "
                             "has no VIT branch"),
    ("vit", "cnn.arch=vgg16_bn", "cnn.arch=vgg16_bn is not used"),
    ("dual", "vit.size=small", None),
    ("cnn", "cnn.arch=vgg16_bn", None),
])
def test_options_of_a_backbone_the_encoder_lacks_are_said_unused(compose, encoder: str,
                                                                 override: str, warned,
                                                                 caplog) -> None:
    """``encoder=cnn vit.size=base`` trained as encoder=cnn without a word: a sweep over
    vit.size trained identical jobs."""
    from faceparse.train import warn_unused_backbone

    cfg = compose([f"encoder={encoder}", override])
    with caplog.at_level("WARNING", logger="faceparse.train"):
        warn_unused_backbone(cfg, [f"encoder={encoder}", override])
    if warned:
        assert warned in caplog.text
    else:
        assert "is not used" not in caplog.text
    caplog.clear()
    quickstart = compose(["experiment=quickstart", "encoder=cnn"])  # sets vit.size itself
    warn_unused_backbone(quickstart, ["experiment=quickstart", "encoder=cnn"])
    assert "is not used" not in caplog.text


def test_a_seed_read_from_the_environment_is_taken(compose, tiny, tmp_path: Path,
                                                   monkeypatch) -> None:
    """``seed=${oc.env:SEED}`` is text: Lightning takes "3" as 3, and so does the check."""
    monkeypatch.setenv("SEED", "3")
    cfg = compose([*tiny, "seed=${oc.env:SEED}"], output_dir=tmp_path / "run")
    check_training_options(cfg)
