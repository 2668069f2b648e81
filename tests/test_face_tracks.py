"""Faces followed through video frames: matched by overlap, held briefly, never mixed."""

from __future__ import annotations

import torch

from faceparse.inference.face_tracks import FaceTrack, FaceTracks, box_iou


def test_box_iou() -> None:
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == 50 / 150
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_each_face_keeps_its_own_track_whatever_order_the_detector_gives() -> None:
    left, right = (0, 0, 10, 10), (50, 0, 60, 10)
    tracks = FaceTracks(smoothing=0.5, hold=1)
    assert tracks.update([left, right]) is False
    first = list(tracks.tracks)
    tracks.update([(52, 0, 62, 10), (2, 0, 12, 10)])  # both moved, listed the other way round
    assert tracks.tracks == first  # the same two tracks, none new
    assert [t.box for t in tracks.tracks] == [(1, 0, 11, 10), (51, 0, 61, 10)]  # smoothed


def test_a_missed_face_is_held_then_dropped_and_a_new_face_starts_afresh() -> None:
    tracks = FaceTracks(smoothing=0.0, hold=1)
    tracks.update([(0, 0, 10, 10)])
    tracks.tracks[0].smooth(torch.ones(2, 4, 4), 0.0)
    assert tracks.update([]) is True and len(tracks.tracks) == 1  # held one frame
    assert tracks.update([]) is False and tracks.tracks == []  # then gone
    tracks.update([(0, 0, 10, 10)])
    assert tracks.tracks[0].state is None  # its smoothing starts again


def test_smoothing_averages_a_tracks_own_logits() -> None:
    track = FaceTrack((0, 0, 4, 4))
    assert torch.equal(track.smooth(torch.zeros(1, 2, 2), 0.6), torch.zeros(1, 2, 2))
    assert torch.allclose(track.smooth(torch.ones(1, 2, 2), 0.6), torch.full((1, 2, 2), 0.4))
    assert torch.equal(track.smooth(torch.ones(1, 3, 3), 0.6), torch.ones(1, 3, 3))  # new size
