"""Learning-rate schedules stepped per optimizer step (so warm-up works for short runs)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["cosine_with_warmup"]


def cosine_with_warmup(
    optimizer: Optimizer,
    total_steps: int,
    warmup_fraction: float = 0.0,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay.

    The factor ends at ``min_lr_ratio`` of the base learning rate.
    """
    warmup = int(total_steps * warmup_fraction)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
