"""What this CPU can do, and the precision and memory format that pay on it.

CPUs differ by two orders of magnitude in bf16: without AVX-512-BF16 or AMX a bf16 matmul
is emulated (~80x slower than fp32 on an AVX2 EPYC), with them it is ~2.4x faster. So the
choice is made here, at run time, from the CPU's flags and a sub-second probe, never from
the device type alone; it is logged once with its reason, and every figure the bench
publishes carries the CPU model and flags it came from.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

__all__ = ["CpuInfo", "CpuPolicy", "cpu_info", "cpu_policy", "decided_cpu_policy", "env_switch",
           "pin_cpu_policy"]

# the flags that decide bf16 and vector width, as Linux's /proc/cpuinfo spells them: x86
# "flags", and Arm "Features" (``sve``; ``bf16`` is FEAT_BF16, as on Graviton3 or Apple M2)
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "sve", "bf16")
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# a choice must win the probe by this factor: timings on a shared machine are noisy
MARGIN = 1.15
# a probe reading on the losing side of the margin is taken again, up to this many times
PROBE_ROUNDS = 3
FORCE_BF16 = "FACEPARSE_CPU_BF16"
FORCE_CHANNELS_LAST = "FACEPARSE_CPU_CHANNELS_LAST"
# the launching process's reason, beside the choice it pinned (:func:`pin_cpu_policy`)
PINNED_REASON = "FACEPARSE_CPU_POLICY_REASON"


@dataclass(frozen=True)
class CpuInfo:
    """The CPU model, its speed-relevant flags, and the kernel level torch dispatches to."""

    model: str
    flags: tuple[str, ...]
    torch_capability: str

    @property
    def native_bf16(self) -> bool:
        """Whether bf16 matmuls can run in hardware (AVX-512-BF16, AMX, Arm BF16).

        A candidate only: the policy's probe still has to show bf16 faster.
        """
        return any(flag in self.flags for flag in BF16_FLAGS)

    def describe(self) -> str:
        flags = ", ".join(self.flags) or "none of " + "/".join(SPEED_FLAGS)
        return f"{self.model} (flags: {flags}; torch kernels: {self.torch_capability})"


def _sysctl(name: str) -> str:
    """One macOS sysctl value, or "" where there is none (another OS, an unknown key)."""
    try:
        done = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True,
                              timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _macos_cpu() -> tuple[str, set[str]]:
    model = _sysctl("machdep.cpu.brand_string")
    flags = {"bf16"} if _sysctl("hw.optional.arm.FEAT_BF16") == "1" else set()
    return model or platform.processor() or platform.machine(), flags


def _read_cpu() -> tuple[str, set[str]]:
    """The CPU model and its flags: Linux's /proc/cpuinfo, macOS's sysctl, else the platform."""
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        if platform.system() == "Darwin":
            return _macos_cpu()
        return platform.processor() or platform.machine(), set()
    model, flags = "", set()
    try:
        text = path.read_text(errors="replace")
    except OSError:  # unreadable: no flags known, so fp32 and the probes decide
        return platform.processor() or platform.machine(), set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:  # x86, Arm
            flags = set(value.split())
    return model or platform.machine(), flags


@functools.cache
def cpu_info() -> CpuInfo:
    """This machine's CPU (read once per process)."""
    model, flags = _read_cpu()
    capability = torch.backends.cpu.get_cpu_capability()
    return CpuInfo(model, tuple(f for f in SPEED_FLAGS if f in flags), capability)


@dataclass(frozen=True)
class CpuPolicy:
    """bf16 autocast and channels_last on this CPU, and why."""

    bf16: bool
    channels_last: bool
    reason: str


def _interleaved_ratio(first: Callable[[], object], second: Callable[[], object],
                       pairs: int = 5) -> float:
    """Median over ``pairs`` of time(first) / time(second), the two run back to back.

    Alternating the two and taking the median of per-pair ratios keeps a busy machine's
    slow moments from landing on one side only: a best-of-3 per side read 3.2x and 0.5x on
    one loaded machine. Load still moves it (NHWC read 1.00-1.12 quiet, 1.35-1.69 beside a
    busy process on a 2-core AVX2 EPYC), hence the policy's margin.
    """
    first()
    second()  # warm-up: allocation, kernel selection
    ratios = []
    for _ in range(pairs):
        start = time.perf_counter()
        first()
        middle = time.perf_counter()
        second()
        ratios.append((middle - start) / max(time.perf_counter() - middle, 1e-9))
    return statistics.median(ratios)


def probe_bf16_speedup(size: int = 512) -> float:
    """fp32 time / bf16 time of a ``size``-square matmul (> 1: bf16 is faster)."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    a16, b16 = a.bfloat16(), b.bfloat16()
    with torch.inference_mode():
        return _interleaved_ratio(lambda: a @ b, lambda: a16 @ b16)


def probe_channels_last_speedup(dtype: torch.dtype = torch.float32) -> float:
    """NCHW time / NHWC time of VGG-like 3x3 conv + BatchNorm + ReLU (> 1: NHWC is faster)."""
    x = torch.randn(2, 64, 64, 64, dtype=dtype)
    block = torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3, padding=1),
                                torch.nn.BatchNorm2d(64), torch.nn.ReLU()).eval().to(dtype)
    block_cl = copy.deepcopy(block).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return _interleaved_ratio(lambda: block(x), lambda: block_cl(x_cl))


def env_switch(name: str) -> bool | None:
    """An environment variable that forces a CPU choice: 1/0, or unset/auto (None)."""
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={value!r}: use 1 (or true, yes, on), 0 (or false, no, off) or "
                     f"auto")


@functools.cache
def cpu_policy() -> CpuPolicy:
    """The CPU precision and memory format for this process: decided once, logged once.

    :func:`decided_cpu_policy` says how it is decided; this is for the code that acts on
    it, and logs the choice with its reason the first time.
    """
    policy = decided_cpu_policy()
    log.info("CPU fast path on %s: %s (for the precision and fast_path.channels_last left "
             "at auto)", cpu_info().describe(), policy.reason)
    return policy


@functools.cache
def decided_cpu_policy() -> CpuPolicy:
    """The CPU policy, decided once per process, without a word in the log.

    For a config resolver (``trainer.precision``), which runs before a command is accepted:
    a refused ``resume=`` must not write into the run's log.

    bf16 only with hardware bf16 *and* a probe showing it faster than fp32; channels_last
    unless a probe convolution is clearly slower in NHWC. The environment
    variables ``FACEPARSE_CPU_BF16`` and ``FACEPARSE_CPU_CHANNELS_LAST`` (1/0/auto)
    force either.
    """
    info = cpu_info()
    reasons = []
    bf16 = env_switch(FORCE_BF16)
    channels_last = env_switch(FORCE_CHANNELS_LAST)
    pinned = os.environ.get(PINNED_REASON)
    if pinned and bf16 is not None and channels_last is not None:
        return CpuPolicy(bf16, channels_last, f"as the process that started this one chose "
                                              f"({pinned})")
    ranks = _launched_ranks()
    if bf16 is not None:
        reasons.append(f"{'bf16' if bf16 else 'fp32'} forced by {FORCE_BF16}")
    elif not info.native_bf16:
        bf16 = False
        reasons.append("fp32: no AVX-512-BF16/AMX/Arm BF16, bf16 would be emulated")
    elif ranks > 1:
        bf16 = True
        reasons.append(f"bf16: hardware bf16, not timed (one of {ranks} processes, which "
                       f"must all choose alike; {FORCE_BF16}=0 keeps fp32)")
    else:
        speedup = _best_reading(probe_bf16_speedup, MARGIN)
        bf16 = speedup > MARGIN
        reasons.append(f"{'bf16' if bf16 else 'fp32'}: bf16 matmul {speedup:.2f}x fp32")
    if channels_last is not None:
        reasons.append(f"{'channels_last' if channels_last else 'NCHW'} forced by "
                       f"{FORCE_CHANNELS_LAST}")
    elif ranks > 1:
        channels_last = True
        reasons.append(f"channels_last, not timed (one of {ranks} processes)")
    else:
        dtype = torch.bfloat16 if bf16 else torch.float32
        speedup = _best_reading(lambda: probe_channels_last_speedup(dtype), 1 / MARGIN)
        # NHWC unless clearly slower: one probe block reads 1.0-1.3x where whole nets gain
        # 1.25x (AVX2 EPYC: VGG19-BN + ViT-B/16) to 1.38x (AMX Xeon); NHWC was never
        # clearly slower on the CPUs measured
        channels_last = speedup > 1 / MARGIN
        reasons.append(f"{'channels_last' if channels_last else 'NCHW'}: "
                       f"NHWC conv {speedup:.2f}x NCHW (NHWC unless below {1 / MARGIN:.2f}x)")
    return CpuPolicy(bool(bf16), bool(channels_last), "; ".join(reasons))


def _best_reading(probe: Callable[[], float], enough: float, rounds: int = PROBE_ROUNDS
                  ) -> float:
    """The best of up to ``rounds`` readings of a speed-up ``probe``, stopping at the first
    above ``enough``. Load only ever slows the side it lands on, so a low reading is the one
    to doubt: on a loaded AVX-512-BF16 EPYC single readings of a 2-7x bf16 speed-up fell
    to 0.5-1.0x in 2 of 12 processes, which chose fp32 by chance."""
    best = probe()
    for _ in range(rounds - 1):
        if best > enough:
            break
        best = max(best, probe())
    return best


def _launched_ranks() -> int:
    """How many processes a launcher started alongside this one (torchrun's ``WORLD_SIZE``,
    srun's ``SLURM_NTASKS``), else 1. Each of them would time its own probes, and timings
    on one loaded machine differ: ranks in bf16 beside ranks in fp32, or NHWC beside NCHW
    parameters, which DDP refuses ("appears not to match strides")."""
    counts = [os.environ.get("WORLD_SIZE", "")]
    if "SLURM_PROCID" in os.environ:
        counts.append(os.environ.get("SLURM_NTASKS", ""))
    return max((int(c) for c in counts if c.strip().isdigit()), default=1)


def pin_cpu_policy() -> CpuPolicy:
    """Decide the CPU policy here, and write it into ``FACEPARSE_CPU_*`` (those not set) so
    every process this one starts (the DDP ranks Lightning launches, a sweep's jobs) makes
    the same choice instead of timing its own probes."""
    policy = cpu_policy()
    os.environ.setdefault(FORCE_BF16, str(int(policy.bf16)))
    os.environ.setdefault(FORCE_CHANNELS_LAST, str(int(policy.channels_last)))
    os.environ.setdefault(PINNED_REASON, policy.reason)
    return policy
