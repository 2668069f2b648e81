"""Results come back from the device one batch late, in order and unchanged; the host
waits for a batch only once the next one is queued (the CUDA side: tests/test_cuda.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from faceparse.inference import predict
from faceparse.inference.host_copies import HostCopies, overlaps


def test_a_batch_is_collected_after_the_next_is_queued() -> None:
    copies = HostCopies(torch.device("cpu"), deferred=True)
    first = torch.arange(6).reshape(2, 3)
    copies.to_host([first])
    assert copies._collected == []  # still pending: the host has not waited for it
    first += 100  # a device buffer reused by the next batch does not change what was queued
    copies.to_host([torch.full((1, 3), 7)])
    assert len(copies._collected) == 1
    (a,), (b,) = copies.results()
    assert torch.equal(a, torch.arange(6).reshape(2, 3)) and torch.equal(b, torch.full((1, 3), 7))
    assert copies.results() == copies._collected  # nothing left pending, nothing twice


def test_predict_gives_the_same_labels_and_probabilities_either_way() -> None:
    torch.manual_seed(0)
    net = nn.Conv2d(3, 5, 1).eval()  # five classes' logits, differing pixel to pixel
    images = torch.randn(5, 3, 12, 12)  # batches of 2, 2 and 1
    waited = predict(net, images, batch_size=2, probs=True, bf16=False, overlap=False)
    overlapped = predict(net, images, batch_size=2, probs=True, bf16=False, overlap=True)
    assert torch.equal(overlapped.labels, waited.labels)
    assert torch.equal(overlapped.probs, waited.probs)
    with torch.no_grad():
        assert torch.equal(waited.labels.long(), net(images).argmax(1))
    assert overlapped.labels.dtype == torch.uint8 and overlapped.labels.shape == (5, 12, 12)


def test_off_cuda_nothing_is_deferred() -> None:
    copies = HostCopies(torch.device("cpu"))
    assert not copies.deferred
    batch = torch.ones(2, 3)
    assert copies.to_device(batch) is batch
    copies.to_host([batch])
    assert copies._collected[0][0] is batch  # already a host tensor: no copy


def test_overlap_is_the_gpus_default_and_refuses_other_values() -> None:
    assert overlaps(torch.device("cuda", 0)) and not overlaps(torch.device("cpu"))
    assert overlaps(torch.device("cpu"), True) and not overlaps(torch.device("cuda", 0), False)
    with pytest.raises(ValueError, match="overlap='yes'"):
        overlaps(torch.device("cpu"), "yes")
