"""The ``census`` bench section: the ops a GPU step would run, counted on any machine.

Fake tensors (``torch._subclasses.fake_tensor``) carry a CUDA device but no memory and
need no GPU; with CUDA autocast switched on, the dispatcher makes for them the dtype
choices it makes on a GPU (its fp32 list sends upsampling, LayerNorm and log-softmax to
fp32, its promote list widens ``cat``), which differ from the CPU's. Each aten op of a
training step (forward, loss, backward) and of an inference batch is recorded with its
output dtype and the bytes of the tensors it reads and writes: a floor for the memory
traffic of its kernels, exact for casts and copies, by the net's module that ran it. So
casts, copies and fp32 activations a GPU profile shows can be traced to their source and
their removal checked without a GPU (BENCHMARKS.md, "What a GPU step moves").

The autograd engine refuses CUDA tensors where there is no GPU (it asks the driver for
the device's streams), so the backward walks the graph in Python, calling each node as
the engine would, in dependency order.
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from faceparse.bench.standins import dtype_names, fused_attention, nbytes
from faceparse.fast_path import FastPath
from faceparse.inference import conv_relu
from faceparse.inference.fold import fold_batchnorm, fold_layer_scale
from faceparse.models.dinov3 import frozen_vits_to_bf16
from faceparse.models.rope_attention import fuse_rope

__all__ = ["OP_CLASSES", "bench_census", "census_step", "emulated_cuda",
           "fuse_conv_relu_as_on_a_gpu", "op_class", "summarise", "to_fake_cuda"]

# aten op names (after autocast and autograd) -> what kind of work; first match wins
OP_CLASSES: tuple[tuple[str, str], ...] = (
    ("attention", r"attention|sdpa|flash"),
    ("matmul / conv", r"^(convolution|cudnn_convolution|mm|addmm|bmm|baddbmm|matmul|linear)"),
    ("resize (upsample)", r"upsample"),
    ("batch / layer norm", r"batch_norm|layer_norm"),
    ("softmax / loss", r"softmax|nll_loss|cross_entropy"),
    ("copy / layout", r"^(_to_copy|copy_|clone|cat|constant_pad_nd|_copy)"),
)
CAST = "cast (dtype change)"
# ops that only make views (in place too: as_strided_, t_), or allocate without writing:
# they move no bytes. Whole names only: as a prefix, "t" would drop threshold_backward
# (ReLU's backward) and tanh, "select" select_backward, "expand" expand_copy: ops that read
# and write whole maps
_NO_TRAFFIC = re.compile(
    r"^(view|_unsafe_view|t|transpose|permute|expand|slice|select|unsqueeze|squeeze|"
    r"as_strided|detach|alias|split|split_with_sizes|_reshape_alias|unbind|chunk|narrow|"
    r"empty|empty_like|empty_strided|new_empty|new_empty_strided|lift_fresh|_local_scalar)"
    r"_?$")


def op_class(name: str, in_dtypes: set[torch.dtype], out_dtypes: set[torch.dtype]) -> str:
    """What kind of work an aten op does; a copy whose output dtype differs is a cast."""
    for label, pattern in OP_CLASSES:
        if re.search(pattern, name):
            if label == "copy / layout" and not out_dtypes <= in_dtypes:
                return CAST
            return label
    return "elementwise / reduce"


def _floats(tensors: list[torch.Tensor]) -> set[torch.dtype]:
    return {t.dtype for t in tensors if t.is_floating_point()}


@dataclass
class OpCensus(TorchDispatchMode):
    """Every aten op below autograd: (phase, stage, class, op, output dtype) -> bytes, calls."""

    phase: str = "forward"
    stage: str = "-"
    rows: dict[tuple[str, ...], list[int]] = field(default_factory=lambda: defaultdict(
        lambda: [0, 0]))

    def __post_init__(self) -> None:
        super().__init__()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if func.namespace == "prim" or _NO_TRAFFIC.match(name):
            return out
        # an out= tensor and copy_'s destination are written, not read
        read = {k: v for k, v in (kwargs or {}).items() if k != "out"}
        ins = [t for t in tree_leaves((args, read)) if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if name.endswith("_") and not outs:  # in place: it writes what it reads
            outs = ins[:1]
        if name == "copy_":
            ins = ins[1:]
        kind = op_class(name, _floats(ins), _floats(outs))
        # a cast is named by what it converts: bfloat16->float32
        dtype = (f"{dtype_names(_floats(ins) - _floats(outs))}->{dtype_names(_floats(outs))}"
                 if kind == CAST else dtype_names(_floats(outs)))
        self.record(kind, name, dtype, nbytes(*ins, *outs))
        return out

    def record(self, kind: str, op: str, dtype: str, nbytes: int) -> None:
        row = self.rows[(self.phase, self.stage, kind, op, dtype)]
        row[0] += nbytes
        row[1] += 1


def _stage_names(net: nn.Module, depth: int) -> dict[nn.Module, str]:
    """Modules at ``depth`` or above it (``encoder.vit``, ``decoder.ctf_2_1``): the stages."""
    return {m: name for name, m in net.named_modules()
            if name and name.count(".") < depth}


def _tag_graph(outputs: Any, stage: str, tags: dict[Any, str]) -> None:
    """Name the untagged autograd nodes behind ``outputs`` after ``stage``."""
    todo = [t.grad_fn for t in tree_leaves(outputs)
            if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    while todo:
        node = todo.pop()
        if node is None or node in tags:
            continue
        tags[node] = stage
        todo += [nxt for nxt, _ in node.next_functions]


@contextlib.contextmanager
def _stages(net: nn.Module, census: OpCensus, tags: dict[Any, str],
            depth: int = 2) -> Iterator[None]:
    """While inside, ``census.stage`` names the innermost stage module running.

    Each stage also tags the autograd nodes its forward made (inner stages first, as their
    forwards finish first), so the backward can be counted by stage too.
    """
    names = _stage_names(net, depth)
    stack: list[str] = []

    def enter(module: nn.Module, *_: Any) -> None:
        stack.append(census.stage)
        census.stage = names[module]

    def leave(module: nn.Module, _: Any, output: Any) -> None:
        _tag_graph(output, names[module], tags)
        census.stage = stack.pop()

    handles = [h for m in names for h in (m.register_forward_pre_hook(enter),
                                          m.register_forward_hook(leave))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _as_engine_passes(grad: torch.Tensor | None, meta: Any) -> torch.Tensor | None:
    """A gradient summed over broadcast dimensions and cast to its forward output's shape
    and dtype, as the engine checks every gradient it hands a node."""
    if grad is None:
        return None
    if tuple(grad.shape) != tuple(meta.shape):
        grad = grad.sum_to_size(meta.shape)
    return grad if grad.dtype == meta.dtype else grad.to(meta.dtype)


def _backward(root: Any, grad: torch.Tensor, census: OpCensus, tags: dict[Any, str]) -> None:
    """What ``root.backward(grad)`` runs, node by node, in dependency order.

    Gradients flowing into a node are summed and brought to its forward output's shape
    and dtype, as the engine does; leaves accumulate into ``.grad``.
    """
    waiting: dict[Any, int] = defaultdict(int)
    todo, seen = [root], {root}
    while todo:
        for nxt, _ in todo.pop().next_functions:
            if nxt is not None:
                waiting[nxt] += 1
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
    inputs: dict[Any, list[torch.Tensor | None]] = {root: [grad]}
    ready = [root]
    with torch.no_grad():
        while ready:
            node = ready.pop()
            census.stage = tags.get(node, "-")
            grads = [_as_engine_passes(g, meta)
                     for g, meta in zip(inputs.pop(node), node._input_metadata, strict=True)]
            if type(node).__name__ == "AccumulateGrad":
                leaf = node.variable
                leaf.grad = grads[0] if leaf.grad is None else leaf.grad + grads[0]
                continue
            outs = node(*grads) if callable(node) else node.apply(*grads)  # C++ or Python
            for (nxt, slot), g in zip(node.next_functions,
                                      outs if isinstance(outs, tuple) else (outs,),
                                      strict=False):
                if nxt is None:
                    continue
                buf = inputs.setdefault(nxt, [None] * len(nxt._input_metadata))
                if g is not None:
                    buf[slot] = g if buf[slot] is None else buf[slot] + g
                waiting[nxt] -= 1
                if not waiting[nxt]:
                    ready.append(nxt)


@contextlib.contextmanager
def emulated_cuda(dtype: torch.dtype | None) -> Iterator[FakeTensorMode]:
    """Fake CUDA tensors, with CUDA autocast in ``dtype`` on (``None``: off).

    ``torch.autocast("cuda")`` switches itself off where no GPU is found; here it must
    not, or the ViT's own autocast would turn the emulated one off inside the ViT.
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch("torch.cuda.amp.common.amp_definitely_not_available",
                                       return_value=False))
        stack.enter_context(mock.patch("torch.cuda.is_bf16_supported", return_value=True))
        mode = stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
        was = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
        torch.set_autocast_enabled("cuda", dtype is not None)
        if dtype is not None:
            torch.set_autocast_dtype("cuda", dtype)
        try:
            yield mode
        finally:
            torch.set_autocast_enabled("cuda", was[0])
            torch.set_autocast_dtype("cuda", was[1])


def fuse_conv_relu_as_on_a_gpu(net: nn.Module) -> int:
    """Each convolution and its ReLU in one cuDNN call (``fast_path.fuse_conv_relu=true``).

    The call's probe needs a GPU, so it is taken to pass in every dtype cuDNN is asked
    for; on fake tensors the call runs its meta kernel and is counted like any other op.
    """
    dtypes = frozenset(conv_relu._BACKENDS["cuda"].dtypes)
    with mock.patch.object(conv_relu, "fused_conv_relu_dtypes",
                           lambda device_type="cpu": (dtypes, ())):
        return conv_relu.fuse_conv_relu(net, "cuda")


def to_fake_cuda(net: nn.Module) -> None:
    """Every parameter and buffer as a fake CUDA tensor (same dtype, shape and strides)."""
    for module in net.modules():
        for key, p in module._parameters.items():
            if p is not None:
                module._parameters[key] = nn.Parameter(torch.empty_like(p, device="cuda"),
                                                       requires_grad=p.requires_grad)
        for key, b in module._buffers.items():
            if b is not None:
                module._buffers[key] = torch.empty_like(b, device="cuda")


def census_step(net: nn.Module, criterion: Callable[..., dict[str, torch.Tensor]] | None,
                batch: int, size: int, num_classes: int, bf16: bool = True,
                channels_last: bool = True) -> list[dict[str, Any]]:
    """The ops of one training step (``criterion`` given) or inference batch, as on a GPU.

    ``net`` is used as it is (its dtypes, memory format, train or eval mode) and left
    holding fake tensors: pass a copy. Rows: phase, stage, class, op, dtype, bytes, calls.
    """
    census, tags = OpCensus(), {}
    with emulated_cuda(torch.bfloat16 if bf16 else None), mock.patch(
            "torch.nn.functional.scaled_dot_product_attention", fused_attention(census)):
        to_fake_cuda(net)
        image = torch.empty(batch, 3, size, size, device="cuda")
        if channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        training = criterion is not None
        with census, _stages(net, census, tags), torch.set_grad_enabled(training):
            if training:
                logits, aux = net.forward_with_aux(image)
                census.stage = "loss"
                target = torch.zeros(batch, size, size, device="cuda", dtype=torch.long)
                loss = criterion(logits, aux, target)["loss"]
                _tag_graph(loss, "loss", tags)
            else:
                net(image).argmax(1)
        if training:
            torch.set_autocast_enabled("cuda", False)  # the backward runs outside autocast
            census.phase = "backward"
            with census:
                _backward(loss.grad_fn, torch.ones((), device="cuda"), census, tags)
    return [{"phase": k[0], "stage": k[1], "class": k[2], "op": k[3], "dtype": k[4],
             "bytes": v[0], "calls": v[1]} for k, v in census.rows.items()]


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """GB by class and phase, by stage, and every row, heaviest first."""
    by_class: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    by_stage: dict[str, float] = defaultdict(float)
    for r in rows:
        by_class[r["class"]][r["phase"]] += r["bytes"] / 1e9
        by_stage[r["stage"]] += r["bytes"] / 1e9
    every = [{**r, "gb": r["bytes"] / 1e9} for r in sorted(rows, key=lambda r: -r["bytes"])]
    return {
        "total_gb": sum(r["bytes"] for r in rows) / 1e9,
        "classes": {k: dict(v) for k, v in sorted(by_class.items(),
                                                  key=lambda kv: -sum(kv[1].values()))},
        "stages": dict(sorted(by_stage.items(), key=lambda kv: -kv[1])),
        "rows": every,
    }


def bench_census(cfg: DictConfig) -> dict[str, Any]:
    """A training step and an inference batch of ``model.net`` as CUDA would run them.

    bf16 autocast and channels_last as on a GPU; the frozen ViT stored in bf16 where
    ``fast_path.frozen_vit_bf16`` says so, and BatchNorm folded for inference where
    ``fast_path.fold_batchnorm`` does (LayerScale where ``fast_path.fold_layer_scale``
    does, each convolution and its ReLU in one cuDNN call where ``fast_path.fuse_conv_relu``
    is true), RoPE fused where ``fast_path.fused_rope`` does (eager, as the census runs).
    Random weights: the values do not matter here.
    """
    fast_path: FastPath = instantiate(cfg.fast_path)
    module = instantiate(cfg.model)
    net, criterion = module.net, module.criterion
    num_classes = module.scheme.num_classes
    b, size = cfg.data.batch_size, cfg.data.image_size
    cuda = torch.device("cuda")
    channels_last = fast_path.wants_channels_last(cuda)

    # as on a bf16 GPU, for both steps (inference_bf16 would ask this machine's CUDA)
    vit_bf16 = fast_path.wants_frozen_vit_bf16_in_training("bf16-mixed")
    train_net = copy.deepcopy(net).train()
    infer_net = copy.deepcopy(net).eval()
    if fast_path.fold_batchnorm:
        fold_batchnorm(infer_net)
    if fast_path.fold_layer_scale:
        fold_layer_scale(infer_net)
    fused_conv_relus = 0
    if fast_path.wants_conv_relu_fused(cuda):
        fused_conv_relus = fuse_conv_relu_as_on_a_gpu(infer_net)
    vit_bf16_train = vit_bf16 and frozen_vits_to_bf16(train_net) > 0
    vit_bf16_infer = vit_bf16 and frozen_vits_to_bf16(infer_net) > 0
    for n in (train_net, infer_net):
        if channels_last:
            n.to(memory_format=torch.channels_last)
        if fast_path.fused_rope:
            fuse_rope(n)
    result: dict[str, Any] = {
        "emulated": "CUDA (fake tensors, CUDA autocast bf16)", "batch_size": b,
        "image_size": size, "channels_last": channels_last,
        "frozen_vit_bf16": {"train": vit_bf16_train, "infer": vit_bf16_infer},
        "fold_batchnorm": fast_path.fold_batchnorm, "fold_layer_scale": fast_path.fold_layer_scale,
        "fused_rope": fast_path.fused_rope, "fused_conv_relus": fused_conv_relus,
    }
    for mode, n, loss in (("train", train_net, criterion), ("infer", infer_net, None)):
        result[mode] = summarise(census_step(n, loss, b, size, num_classes,
                                             channels_last=channels_last))
    return result
