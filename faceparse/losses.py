"""Segmentation loss: cross-entropy (optionally + Dice) on the final logits plus weighted
auxiliary terms. Dice weighs every class equally, which lifts small parts (lips, brows)
early in training, as the mean-F1 metric does."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from faceparse.labels import IGNORE_INDEX

__all__ = ["DeepSupervisionLoss", "soft_dice_loss"]


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """1 - mean soft Dice over the classes present in ``target``; ignored pixels excluded."""
    num_classes = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1)
    probs = logits.float().softmax(1) * valid
    onehot = F.one_hot(target.clamp(max=num_classes - 1) * valid.squeeze(1), num_classes)
    onehot = onehot.permute(0, 3, 1, 2).float() * valid
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    present = onehot.sum(dims) > 0
    dice = (2 * inter + 1.0) / (total + 1.0)
    return 1 - dice[present].mean() if present.any() else logits.sum() * 0


class DeepSupervisionLoss(nn.Module):
    """``seg(logits) + aux_weight * mean(seg(aux_i))`` with ``seg = CE + dice_weight * Dice``.

    Args:
        aux_weight: weight of the mean auxiliary loss (reference 0.4).
        class_weights: optional per-class CE weights for rare classes.
        dice_weight: weight of the soft Dice term (reference 0: CE only).
    """

    def __init__(
        self,
        aux_weight: float = 0.4,
        class_weights: Sequence[float] | None = None,
        dice_weight: float = 0.0,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        self.aux_weight = aux_weight
        self.dice_weight = dice_weight
        self.ignore_index = ignore_index
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float)
        self.register_buffer("class_weights", weight, persistent=False)

    def cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.float(), target, weight=self.class_weights, ignore_index=self.ignore_index
        )

    def segmentation_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.cross_entropy(logits, target)
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(logits, target, self.ignore_index)
        return loss

    def forward(
        self, logits: torch.Tensor, aux: Sequence[torch.Tensor], target: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        main = self.segmentation_loss(logits, target)
        if not aux:
            return {"loss": main, "loss_main": main}
        aux_loss = torch.stack([self.segmentation_loss(a, target) for a in aux]).mean()
        return {"loss": main + self.aux_weight * aux_loss, "loss_main": main, "loss_aux": aux_loss}
