"""Moving batches to a GPU and results back without draining its queue between batches.

``images.to("cuda")`` from pageable memory and ``labels.cpu()`` each make the host wait
for the GPU: after every batch the queue ran dry, and the next batch's kernels reached an
idle GPU one launch at a time (an H100 sat idle 15.5 of the 66.6 ms of an eager inference
batch, waiting for the host; BENCHMARKS.md). Here inputs go through pinned memory with
non-blocking copies, each batch's results are copied back into pinned memory behind its
kernels, and the host waits for them only once the next batch is queued. Off CUDA the
results are host tensors already and nothing is deferred.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["HostCopies", "overlaps"]


def overlaps(device: torch.device, overlap: bool | None = None) -> bool:
    """Whether a batch's results are collected only once the next batch is queued: on
    CUDA unless ``overlap`` says otherwise."""
    if overlap is None:
        return device.type == "cuda"
    if not isinstance(overlap, bool):
        raise ValueError(f"overlap={overlap!r}: use true, false or null (on a GPU)")
    return overlap


class _Done:
    """A finished event, for deferred copies off CUDA (tests of the bookkeeping)."""

    def synchronize(self) -> None:
        pass


class HostCopies:
    """Inputs to ``device``, each batch's results back to the host, one batch late.

    ``deferred`` (default: on CUDA) queues the copies back and collects them after the
    next batch; results come back in order, as pageable host tensors, from
    :meth:`results`. The pinned staging memory of a batch is released once collected.
    """

    def __init__(self, device: torch.device, deferred: bool | None = None) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.deferred = overlaps(device, deferred)
        self._pending: tuple[torch.cuda.Event | _Done, list[torch.Tensor]] | None = None
        self._collected: list[list[torch.Tensor]] = []

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """``batch`` on the device, copied from pinned memory without the host waiting."""
        if self.cuda and batch.device.type == "cpu" and not batch.is_pinned():
            batch = batch.pin_memory()
        return batch.to(self.device, non_blocking=True)

    def to_host(self, outputs: Sequence[torch.Tensor]) -> None:
        """Queue one batch's results for the host, then collect the batch before it."""
        if not self.deferred:
            self._collected.append([t.cpu() for t in outputs])
            return
        staged = []
        for tensor in outputs:
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=self.cuda)
            host.copy_(tensor, non_blocking=True)
            staged.append(host)
        event = torch.cuda.Event() if self.cuda else _Done()
        if self.cuda:  # after this batch's copies, on their stream (that of the tensors' GPU)
            event.record(torch.cuda.current_stream(self.device))
        self._collect()  # this batch is queued: the GPU has work while the host waits
        self._pending = (event, staged)

    def _collect(self) -> None:
        if self._pending is None:
            return
        event, staged = self._pending
        event.synchronize()
        self._collected.append([host.clone() for host in staged])  # pageable; pinned freed
        self._pending = None

    def results(self) -> list[list[torch.Tensor]]:
        """Every batch's results, in order, on the host (waits for the last batch)."""
        self._collect()
        return self._collected
