"""How a net runs on the hardware at hand: precision, memory format, cuDNN, compilation.

Training (the LightningModule's ``setup``) and inference (``prepare_for_inference``) take
their speed options from :class:`FastPath`, so what the bench measures is what both use.
On CUDA: channels_last, cuDNN autotuning and bf16 where the GPU supports it. On a CPU the
choice is the CPU's (:func:`faceparse.hardware.cpu_policy`: flags and a sub-second probe):
bf16 inference only where bf16 is faster than fp32 there (without AVX-512-BF16/AMX it is
~80x slower), channels_last only where it pays; for inference, freed memory is kept for
reuse (:mod:`faceparse.cpu_memory`). CPU training follows the same bf16 choice
(:func:`auto_precision`). Figures: BENCHMARKS.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from faceparse.hardware import cpu_policy, decided_cpu_policy
from faceparse.models.rope_attention import fuse_rope
from faceparse.option_values import booleans, shown

__all__ = ["COMPILE_MODES", "COMPILE_SCOPES", "FastPath", "auto_precision", "compile_regions",
           "inference_bf16", "on_gpu"]

# torch.compile's modes; on CUDA, reduce-overhead and max-autotune replay CUDA graphs
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
# what one torch.compile call covers: each part of the net whole, or each repeated block
COMPILE_SCOPES = ("parts", "blocks")


def on_gpu(accelerator: str) -> bool:
    """Whether a Lightning ``accelerator`` setting runs on a CUDA GPU here."""
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def cuda_bf16() -> bool:
    """Whether this GPU computes bf16 natively (Ampere and later). torch's default also
    counts GPUs that can only emulate it (V100, T4), where bf16 is the slow path."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def auto_precision(accelerator: str = "auto") -> str:
    """Training precision: bf16 mixed where bf16 is the faster path, fp32 otherwise.

    On a GPU that supports bf16; on a CPU where :func:`~faceparse.hardware.cpu_policy`
    chose bf16 (hardware bf16, AMX or AVX-512-BF16, that wins its probe): there the
    quickstart trained 1.38x faster in bf16 (4.4 against 6 minutes on a 2-core AMX Xeon)
    and reached the same F1 (BENCHMARKS.md). Without hardware bf16 it is emulated, ~11x
    slower, and training stays fp32.
    ``FACEPARSE_CPU_BF16=0`` or ``trainer.precision=32-true`` keeps fp32.
    """
    if on_gpu(accelerator):
        return "bf16-mixed" if cuda_bf16() else "32-true"
    if accelerator in ("auto", "cpu"):
        return "bf16-mixed" if decided_cpu_policy().bf16 else "32-true"
    return "32-true"


def inference_bf16(device: str | torch.device) -> bool:
    """Whether inference on ``device`` runs in bf16 autocast: where bf16 is the faster path."""
    device = torch.device(device)
    if device.type == "cuda":
        return cuda_bf16()
    return device.type == "cpu" and cpu_policy().bf16


@dataclass(frozen=True)
class FastPath:
    """Speed options for a net on a device.

    Args:
        channels_last: NHWC weights and activations for the convolutions: ``"auto"`` on
            CUDA always and on a CPU where the CPU policy's probe says it pays; ``True`` or
            ``False`` forces it on every device.
        cudnn_benchmark: let cuDNN time its convolution algorithms once per input shape
            (CUDA only; a process-wide setting). Pays when shapes repeat.
        compile: ``torch.compile`` each part of the net in place (slow first steps, then
            faster; state_dict keys unchanged, and ``forward_with_aux`` is covered too).
        compile_scope: what one compilation covers (:data:`COMPILE_SCOPES`; needs
            ``compile``): ``"parts"`` compiles each part of the net (encoder, decoder) as one
            graph, the ViT's blocks unrolled into it; ``"blocks"`` compiles each block of a
            repeated stack (a timm ``blocks`` list: the ViT's) on its own, so identical
            blocks share one compilation, and every other part whole, as ``"parts"`` does.
            The ViT's glue around its blocks (patch embedding, RoPE tables) then runs eagerly.
        compile_mode: ``torch.compile``'s mode (:data:`COMPILE_MODES`); needs ``compile``.
            On CUDA ``reduce-overhead`` and ``max-autotune`` replay CUDA graphs, whose
            outputs the next replay overwrites: each call of the net then starts a new graph
            step and hands out copies of its outputs.
        fold_batchnorm: inference only: fold each BatchNorm into the convolution before it.
        fold_layer_scale: inference only: fold each ViT block's LayerScale into the linear
            layer before it (:func:`faceparse.inference.fold.fold_layer_scale`).
        fuse_conv_relu: inference only: each convolution and the ReLU after it in one
            library call (:mod:`faceparse.inference.conv_relu`; needs ``fold_batchnorm``
            where a BatchNorm sits between them). ``"auto"``: on a CPU (oneDNN, measured
            1.12x); ``True``: on CUDA too (cuDNN, not yet measured on a GPU); ``False``: off.
        frozen_vit_bf16: store a frozen ViT's weights in bf16 and run it in bf16, for
            inference and for training (where it has no gradient to keep); ``"auto"`` where
            the work runs in bf16 anyway: inference on a bf16 GPU or a CPU with fast bf16,
            training in ``bf16-mixed`` precision. Checkpoints still hold fp32 weights.
        reuse_cpu_memory: inference on a CPU only: have glibc keep freed large blocks
            instead of unmapping them (:mod:`faceparse.cpu_memory`; process-wide, and
            ``False`` does not undo an earlier switch in the same process).
        fused_rope: rotate a DINOv3 ViT's q and k together in five passes instead of about
            fourteen, bit-identical (:mod:`faceparse.models.rope_attention`). Eager inference
            and frozen training only: compiled graphs keep timm's code, which inductor fuses.
    """

    channels_last: bool | str = "auto"
    cudnn_benchmark: bool = True
    compile: bool = False
    compile_mode: str = "default"
    compile_scope: str = "parts"
    fold_batchnorm: bool = True
    fold_layer_scale: bool = True
    fuse_conv_relu: bool | str = "auto"
    frozen_vit_bf16: bool | str = "auto"
    reuse_cpu_memory: bool = True
    fused_rope: bool = True

    def __post_init__(self) -> None:
        booleans("fast_path.", cudnn_benchmark=self.cudnn_benchmark, compile=self.compile,
                 fold_batchnorm=self.fold_batchnorm, fold_layer_scale=self.fold_layer_scale,
                 reuse_cpu_memory=self.reuse_cpu_memory, fused_rope=self.fused_rope)
        for key in ("channels_last", "fuse_conv_relu", "frozen_vit_bf16"):
            value = getattr(self, key)
            if value != "auto" and not isinstance(value, bool):
                raise ValueError(f"fast_path.{key}={shown(value)}: use auto, true or false")
        # each choice's first value is torch.compile's own behaviour, the only one without it
        for key, choices in (("compile_mode", COMPILE_MODES), ("compile_scope", COMPILE_SCOPES)):
            value = getattr(self, key)
            if value not in choices:
                raise ValueError(f"fast_path.{key}={value!r}: use one of {', '.join(choices)}")
            if value != choices[0] and not self.compile:
                raise ValueError(f"fast_path.{key}={value} has no effect without "
                                 f"fast_path.compile=true: set both")

    def apply(self, net: nn.Module, device: str | torch.device) -> nn.Module:
        """Switch the options on for ``net`` (in place, once) as they pay on ``device``."""
        device = torch.device(device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
        if device.type == "cpu":
            cpu_policy()  # the choice behind the precision and memory format, logged once
        if self.wants_channels_last(device):  # kept by a later move to the device
            net.to(memory_format=torch.channels_last)
        if self.fused_rope:
            fuse_rope(net)
        if self.compile:
            for region in compile_regions(net, self.compile_scope):
                region.compile(mode=self.compile_mode)
            if device.type == "cuda" and self.compile_mode in CUDA_GRAPH_MODES:
                keep_cuda_graph_outputs(net)
        return net

    def wants_frozen_vit_bf16(self, device: torch.device, bf16: bool | None = None) -> bool:
        """Whether a frozen ViT is stored and run in bf16 for inference on ``device``:
        ``auto`` follows the inference's own precision, ``bf16`` (``None``: bf16 where it
        is the faster path there), so an fp32 run keeps an fp32 ViT."""
        return self._frozen_vit_bf16_unless_auto() or (
            self.frozen_vit_bf16 == "auto"
            and (inference_bf16(device) if bf16 is None else bool(bf16)))

    def wants_frozen_vit_bf16_in_training(self, precision: str) -> bool:
        """Whether a frozen ViT is stored and run in bf16 when training in ``precision``."""
        return self._frozen_vit_bf16_unless_auto() or (
            self.frozen_vit_bf16 == "auto" and str(precision).startswith("bf16"))

    def _frozen_vit_bf16_unless_auto(self) -> bool:
        """The forced choice (``False`` for ``"auto"``); any other value is refused."""
        if self.frozen_vit_bf16 == "auto" or isinstance(self.frozen_vit_bf16, bool):
            return self.frozen_vit_bf16 is True
        raise ValueError(f"fast_path.frozen_vit_bf16={self.frozen_vit_bf16!r}: use auto, true "
                         f"or false")

    def wants_conv_relu_fused(self, device: torch.device) -> bool:
        """Whether inference on ``device`` fuses each convolution with its ReLU."""
        if self.fuse_conv_relu == "auto":
            return device.type == "cpu"
        return self.fuse_conv_relu is True and device.type in ("cpu", "cuda")

    def wants_channels_last(self, device: torch.device) -> bool:
        """Whether NHWC pays on ``device`` (or is forced)."""
        if self.channels_last == "auto":
            return device.type == "cuda" or (device.type == "cpu" and cpu_policy().channels_last)
        return self.channels_last  # a bool: __post_init__ refused anything else


def _block_stack(module: nn.Module) -> nn.Module | None:
    """A module's repeated blocks (timm's ``blocks``: a ViT's transformer blocks), if any."""
    blocks = getattr(module, "blocks", None)
    stack = isinstance(blocks, (nn.ModuleList, nn.Sequential)) and len(blocks) > 1
    return blocks if stack else None


def _holds_block_stack(module: nn.Module) -> bool:
    return any(_block_stack(m) is not None for m in module.modules())


def compile_regions(net: nn.Module, scope: str = "parts") -> list[nn.Module]:
    """The modules that ``torch.compile`` compiles one by one under ``compile_scope``.

    ``"parts"``: the net's children. ``"blocks"``: each block of every repeated stack, and
    each module beside a stack compiled whole; the stack's owner (a timm ViT's own forward:
    patch embedding, RoPE, the loop over its blocks) is not compiled, nor are bare
    containers (``ModuleDict``, ``ModuleList``), which have no forward of their own.
    """
    if scope == "parts":
        return list(net.children())
    if scope != "blocks":
        raise ValueError(f"compile scope {scope!r}: use one of {', '.join(COMPILE_SCOPES)}")
    regions: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        stack = _block_stack(module)
        if stack is not None:
            regions.extend(stack)
            return
        for child in module.children():
            if _holds_block_stack(child) or isinstance(child, (nn.ModuleDict, nn.ModuleList)):
                visit(child)
            else:
                regions.append(child)

    visit(net)
    return regions


def _new_graph_step(module: nn.Module, args: tuple) -> None:
    torch.compiler.cudagraph_mark_step_begin()


def _copy_outputs(module: nn.Module, args: tuple, output: object) -> object:
    if isinstance(output, torch.Tensor):
        return output.clone()
    if isinstance(output, (tuple, list)):
        return type(output)(_copy_outputs(module, args, item) for item in output)
    return output


def keep_cuda_graph_outputs(net: nn.Module) -> nn.Module:
    """Make a net whose parts replay CUDA graphs safe to call again while outputs are kept.

    A replay writes into the same memory as the one before, so logits a caller still holds
    (a predictor's list of batches) would change under it. Each call of ``net`` now starts a
    new graph step and returns copies. Training's ``forward_with_aux`` does not go through
    these hooks: its outputs are used up by the backward pass of the same step.
    """
    if not getattr(net, "_faceparse_keeps_graph_outputs", False):
        net.register_forward_pre_hook(_new_graph_step)
        net.register_forward_hook(_copy_outputs)
        net._faceparse_keeps_graph_outputs = True
    return net
