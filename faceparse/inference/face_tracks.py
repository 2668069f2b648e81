"""Faces followed through a video (crop=faces), each with its own smoothed box and logits.

Every face the detector finds in a frame is parsed, as in a photo. A face is matched to
the previous frame's by box overlap (IoU), so its box and logits average over its own
frames only: two people in a frame never blend into one another's smoothing. A face the
detector misses keeps its last box for ``hold`` frames (the LBP cascade drops single
frames of a face that is there); after that its track ends, and a face found again starts
afresh.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from faceparse.inference.faces import Box

__all__ = ["MIN_IOU", "FaceTrack", "FaceTracks", "box_iou", "smooth_box"]

MIN_IOU = 0.3  # a found box overlapping a track's box less than this is another face


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes; 0 for empty ones."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0, width) * max(0, height)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def smooth_box(old: Box | None, new: Box, keep: float) -> Box:
    """``keep`` of the old box plus the rest of the new one, in whole pixels."""
    if old is None:
        return new
    return tuple(round(keep * o + (1 - keep) * n) for o, n in zip(old, new, strict=True))


@dataclass
class FaceTrack:
    """One region followed through the frames: its box, its smoothed logits and the last
    raw and smoothed labels (for the flicker measure)."""

    box: Box
    missed: int = 0
    state: torch.Tensor | None = None
    raw_prev: torch.Tensor | None = None
    smooth_prev: torch.Tensor | None = None

    def smooth(self, logits: torch.Tensor, smoothing: float) -> torch.Tensor:
        """The moving average of this region's logits, ``logits`` included."""
        same = self.state is not None and self.state.shape == logits.shape
        self.state = smoothing * self.state + (1 - smoothing) * logits if same else logits
        return self.state


class FaceTracks:
    """The faces of the current frame; :meth:`update` with each frame's detections."""

    def __init__(self, smoothing: float, hold: int) -> None:
        self.smoothing, self.hold = smoothing, hold
        self.tracks: list[FaceTrack] = []

    def update(self, found: list[Box]) -> bool:
        """Match ``found`` to the tracks (largest overlap first); a new face starts a track,
        a track without a face keeps its box up to ``hold`` frames, then ends. Returns
        whether a missed face's box was kept in this frame."""
        pairs = sorted(((box_iou(t.box, f), i, j) for i, t in enumerate(self.tracks)
                        for j, f in enumerate(found)), reverse=True)
        matched: dict[int, int] = {}
        for overlap, i, j in pairs:
            if overlap < MIN_IOU:
                break
            if i not in matched and j not in matched.values():
                matched[i] = j
        kept = []
        for i, track in enumerate(self.tracks):
            if i in matched:
                track.box = smooth_box(track.box, found[matched[i]], self.smoothing)
                track.missed = 0
            else:
                track.missed += 1
            if track.missed <= self.hold:
                kept.append(track)
        taken = set(matched.values())
        self.tracks = kept + [FaceTrack(box) for j, box in enumerate(found) if j not in taken]
        return any(track.missed for track in self.tracks)
