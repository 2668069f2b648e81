"""Extending a run keeps its learning rate continuous.

Before, ``resume=<run> trainer.max_epochs=<more>`` rebuilt the cosine schedule for the new
length and read the restored step on it: one step at the old rate, then a jump back up (a
warm restart). Now the schedule continues from the rate reached and decays over the rest
of the new length to its floor.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import lightning as L
import pytest
import torch

from faceparse.train import train
from faceparse.training.schedulers import cosine_with_warmup

BASE, FLOOR = 0.1, 0.01  # min_lr_ratio 0.1


def stepped(total: int, steps: int, warmup_fraction: float = 0.0, start=None):
    """The LRs of ``steps`` steps of a ``total``-step schedule, optionally started from a
    saved ``(scheduler, optimizer)`` state; returns them and the state at the end."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=BASE)
    scheduler = cosine_with_warmup(optimizer, total, warmup_fraction, FLOOR / BASE)
    if start is not None:  # as Lightning restores: the optimizer, then the scheduler
        optimizer.load_state_dict(start[1])
        scheduler.load_state_dict(start[0])
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs, (scheduler.state_dict(), optimizer.state_dict()), optimizer.param_groups[0]["lr"]


def saved_and_loaded(state):
    """Through a file read data-only, as checkpoints are."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_an_extended_schedule_continues_from_the_rate_reached_to_the_floor() -> None:
    first, state, _ = stepped(total=10, steps=6)
    rest, _, end = stepped(total=30, steps=24, start=saved_and_loaded(state))
    lrs = first + rest
    assert rest[0] == pytest.approx(stepped(total=10, steps=7)[0][6])  # no stale step
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))  # no jump back up
    steps = [a - b for a, b in zip(lrs, lrs[1:], strict=False)]
    assert max(steps[5:]) <= max(steps[:5])  # the rest of the decay, spread wider
    assert end == pytest.approx(FLOOR) and lrs[-1] > FLOOR  # the floor at the new end


def test_a_resume_at_the_same_length_repeats_the_schedule_exactly() -> None:
    whole, _, _ = stepped(total=12, steps=12, warmup_fraction=0.25)
    first, state, _ = stepped(total=12, steps=5, warmup_fraction=0.25)
    rest, _, _ = stepped(total=12, steps=7, warmup_fraction=0.25, start=saved_and_loaded(state))
    assert first + rest == whole


def test_extended_during_warm_up_the_warm_up_keeps_its_length() -> None:
    first, state, _ = stepped(total=10, steps=2, warmup_fraction=0.4)  # warm-up: 4 steps
    rest, _, end = stepped(total=20, steps=18, warmup_fraction=0.4, start=state)
    lrs = first + rest
    assert lrs[:4] == pytest.approx([BASE / 4, BASE / 2, 3 * BASE / 4, BASE])
    assert max(lrs) == pytest.approx(BASE) and end == pytest.approx(FLOOR)


def test_a_checkpoint_without_the_schedule_continues_from_the_optimizers_rate() -> None:
    """Checkpoints from before the schedule was saved (its factor was a closure)."""
    first, (scheduler, optimizer), _ = stepped(total=10, steps=6)
    old = {**scheduler, "lr_lambdas": [None]}
    rest, _, end = stepped(total=30, steps=24, start=(old, optimizer))
    assert rest[0] == pytest.approx(stepped(total=10, steps=7)[0][6])
    assert all(a >= b for a, b in zip(first + rest, rest, strict=False))
    assert end == pytest.approx(FLOOR)


class StopAtStep2(L.Callback):
    """Stands in for a kill after the second optimizer step (mid-schedule)."""

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == 2:
            raise RuntimeError("stopped by the test")


def test_resume_with_a_longer_run_has_no_lr_jump(compose, tiny, tmp_path: Path) -> None:
    """As README says: ``resume=<run> trainer.max_epochs=<more>`` (here 2 -> 4 epochs of 2
    steps, stopped after step 2): the logged LR never rises, and ends at the floor."""
    overrides = [*tiny, "test=false", "data.num_workers=0", "scheduler.min_lr_ratio=0.01",
                 f"+callbacks.stop._target_={__name__}.StopAtStep2"]
    with pytest.raises(RuntimeError, match="stopped by the test"):
        train(compose([*overrides, "trainer.max_epochs=2"], output_dir=tmp_path))
    train(compose([*overrides, "trainer.max_epochs=4", f"resume={tmp_path}"],
                  output_dir=tmp_path))

    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    key = next(k for k in rows[0] if k.startswith("lr-"))
    lrs = [float(r[key]) for r in rows if r.get(key)]
    base = lrs[0]
    assert len(lrs) == 8  # steps 0-1 stopped, 2-7 resumed: one metrics file
    assert lrs[2] == pytest.approx(base * (0.01 + 0.99 * 0.5))  # where the 4-step run was
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False)), lrs
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 8
    for group in state["optimizer_states"][0]["param_groups"]:
        assert group["lr"] == pytest.approx(group["initial_lr"] * 0.01)  # the floor
