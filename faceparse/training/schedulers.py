"""Learning-rate schedules stepped per optimizer step (so warm-up works for short runs).

A schedule's length is the run's (``trainer.estimated_stepping_batches``), so extending a
run (``resume=<run> trainer.max_epochs=<more>``) rebuilds it with a new length. Read on the
new curve, the restored step would jump the learning rate back up (a warm restart that
knocks settled weights away). Instead the schedule continues from the rate the run reached
and spreads the rest of its decay over the new end (:meth:`Cosine.extend`); its state (length,
warm-up, where it was last extended) travels in the checkpoint.
"""

from __future__ import annotations

import math
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["Cosine", "CosineWithWarmup", "cosine_with_warmup"]


class Cosine:
    """Linear warm-up over ``warmup`` steps, then a cosine decay to ``min_lr_ratio`` at
    ``total_steps``: the factor of the base learning rate at a step.

    The decay's progress runs from ``anchor_progress`` at ``anchor_step`` to 1 at
    ``total_steps``; a fresh schedule is anchored at the end of warm-up with progress 0.
    A callable object, not a closure, so that ``LambdaLR`` saves its attributes.
    """

    def __init__(self, total_steps: int, warmup: int, min_lr_ratio: float) -> None:
        self.total_steps = total_steps
        self.warmup = warmup
        self.min_lr_ratio = min_lr_ratio
        self.anchor_step = warmup
        self.anchor_progress = 0.0

    def progress(self, step: int) -> float:
        """How far the decay is at ``step`` (0: the base rate, 1: the floor)."""
        span = max(1, self.total_steps - self.anchor_step)
        done = (step - self.anchor_step) / span
        return min(1.0, self.anchor_progress + (1 - self.anchor_progress) * done)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        cosine = 0.5 * (1 + math.cos(math.pi * self.progress(step)))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * cosine

    def extend(self, step: int, total_steps: int) -> None:
        """End at ``total_steps`` from ``step`` on, continuing from the factor reached there:
        the rest of the decay is spread over the new remainder (a run extended after it
        reached the floor stays there). Warm-up keeps its length in steps."""
        if total_steps == self.total_steps:
            return
        if step > self.warmup:  # during warm-up the decay has not started: it just ends later
            self.anchor_progress = self.progress(step)
            self.anchor_step = step
        self.total_steps = total_steps

    def continue_from(self, step: int, factor: float) -> None:
        """Continue the decay from ``factor`` at ``step`` (a schedule whose saved state is
        unknown: a checkpoint from before it was saved); nothing when the curve has it."""
        if step <= 0 or math.isclose(factor, self(step), rel_tol=1e-9):
            return
        floor = self.min_lr_ratio
        cosine = 2 * (factor - floor) / (1 - floor) - 1 if floor < 1 else 1.0
        self.warmup = min(self.warmup, step)
        self.anchor_step = step
        self.anchor_progress = math.acos(min(1.0, max(-1.0, cosine))) / math.pi


class CosineWithWarmup(LambdaLR):
    """``LambdaLR`` over one :class:`Cosine` that, when a checkpoint of another length is
    loaded, continues the saved schedule to this one's length (:meth:`Cosine.extend`)."""

    def __init__(self, optimizer: Optimizer, schedule: Cosine) -> None:
        self.schedule = schedule
        super().__init__(optimizer, schedule)

    def state_dict(self) -> dict[str, Any]:
        """``LambdaLR``'s state (the schedule's attributes as plain data), without the
        schedule object itself: checkpoints are read data-only."""
        state = super().state_dict()
        state.pop("schedule", None)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the saved schedule, then continue it to this run's length. An older
        checkpoint saved no schedule: it continues from the learning rate the restored
        optimizer holds (Lightning restores optimizers before schedulers)."""
        total_steps = self.schedule.total_steps  # this run's length, before the saved one
        saved = any(state_dict.get("lr_lambdas") or [])
        super().load_state_dict(state_dict)
        if saved:
            self.schedule.extend(self.last_epoch, total_steps)
        else:
            reached = self.optimizer.param_groups[0]["lr"] / self.base_lrs[0]
            self.schedule.continue_from(self.last_epoch, reached)


def cosine_with_warmup(
    optimizer: Optimizer,
    total_steps: int,
    warmup_fraction: float = 0.0,
    min_lr_ratio: float = 0.0,
) -> CosineWithWarmup:
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay.

    The factor ends at ``min_lr_ratio`` of the base learning rate. Values outside
    ``0 <= warmup_fraction < 1`` and ``0 <= min_lr_ratio <= 1`` are refused: they give a
    schedule that never reaches the base rate, starts above it or turns negative (gradient
    ascent), without a word.
    """
    for name, value, top, closed in (("warmup_fraction", warmup_fraction, 1, False),
                                     ("min_lr_ratio", min_lr_ratio, 1, True)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not (
                0 <= value <= top if closed else 0 <= value < top):
            upper = f"<= {top}" if closed else f"< {top}"
            raise ValueError(f"scheduler.{name}={value!r}: use a number with 0 <= {name} "
                             f"{upper}")
    warmup = int(total_steps * warmup_fraction)
    return CosineWithWarmup(optimizer, Cosine(total_steps, warmup, min_lr_ratio))
