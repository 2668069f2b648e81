"""The CPU policy: bf16 only with hardware bf16 that wins its probe, NHWC where it pays."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from faceparse import hardware
from faceparse.hardware import CpuInfo, cpu_info, cpu_policy, decided_cpu_policy

CPUINFO = """processor\t: 0
model name\t: Test CPU 9000
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile
processor\t: 1
model name\t: Test CPU 9000
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile
"""

# an Arm Neoverse V1 (Graviton3) as Linux shows it: no model name, "Features" not "flags"
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes sha2 crc32 atomics fphp asimdhp sve bf16 i8mm
CPU implementer\t: 0x41
CPU part\t: 0xd40
"""


@pytest.fixture(autouse=True)
def fresh_policy(monkeypatch: pytest.MonkeyPatch):
    """Each test decides anew (the policy is cached per process) and forces nothing."""
    for name in (hardware.FORCE_BF16, hardware.FORCE_CHANNELS_LAST, hardware.PINNED_REASON,
                 "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.setenv(name, "")  # recorded, so what a test (or pinning) sets is undone
        monkeypatch.delenv(name)
    forget_policy()
    yield
    forget_policy()


def forget_policy() -> None:
    for cached in (cpu_info, cpu_policy, decided_cpu_policy):
        cached.cache_clear()


def fake_cpu(monkeypatch: pytest.MonkeyPatch, flags: tuple[str, ...], bf16_speedup: float,
             nhwc_speedup: float) -> list[str]:
    """This CPU's flags and probe results; returns the probes that ran."""
    ran: list[str] = []
    monkeypatch.setattr(hardware, "cpu_info", lambda: CpuInfo("Fake", flags, "AVX512"))
    monkeypatch.setattr(hardware, "probe_bf16_speedup",
                        lambda: ran.append("bf16") or bf16_speedup)
    monkeypatch.setattr(hardware, "probe_channels_last_speedup",
                        lambda dtype: ran.append(f"nhwc {dtype}") or nhwc_speedup)
    return ran


def test_cpu_info_reads_model_and_speed_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    (tmp_path / "cpuinfo").write_text(CPUINFO)
    real_path = hardware.Path
    monkeypatch.setattr(hardware, "Path", lambda p: real_path(tmp_path / "cpuinfo")
                        if p == "/proc/cpuinfo" else real_path(p))
    info = cpu_info()
    assert info.model == "Test CPU 9000"
    assert info.flags == ("avx2", "avx512f", "avx512_bf16", "amx_tile")
    assert info.native_bf16
    assert "Test CPU 9000" in info.describe() and "avx512_bf16" in info.describe()


def test_an_unreadable_cpuinfo_means_no_flags_not_a_failed_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cpuinfo").write_bytes(b"model name\t: Odd \xff CPU\nflags\t: avx2\n")
    real_path = hardware.Path
    monkeypatch.setattr(hardware, "Path", lambda p: real_path(tmp_path / "cpuinfo")
                        if p == "/proc/cpuinfo" else real_path(p))
    assert cpu_info().flags == ("avx2",)  # not UTF-8: read, the odd byte replaced
    cpu_info.cache_clear()
    real_read = real_path.read_text
    def read_text(self, *args, **kwargs) -> str:  # as root, chmod 0 would still read
        if self.name == "cpuinfo":
            raise PermissionError(13, "Permission denied")
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(real_path, "read_text", read_text)
    info = cpu_info()
    assert info.flags == () and not info.native_bf16


def test_arm_features_count_as_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cpuinfo").write_text(ARM_CPUINFO)
    real_path = hardware.Path
    monkeypatch.setattr(hardware, "Path", lambda p: real_path(tmp_path / "cpuinfo")
                        if p == "/proc/cpuinfo" else real_path(p))
    monkeypatch.setattr(hardware.platform, "machine", lambda: "aarch64")
    info = cpu_info()
    assert info.model == "aarch64"
    assert info.flags == ("sve", "bf16")
    assert info.native_bf16  # a candidate: the probe still decides


@pytest.mark.parametrize(("feat_bf16", "flags"), [("1", ("bf16",)), ("0", ()), ("", ())])
def test_macos_reads_model_and_bf16_from_sysctl(
    monkeypatch: pytest.MonkeyPatch, feat_bf16: str, flags: tuple[str, ...]
) -> None:
    real_path = hardware.Path
    monkeypatch.setattr(hardware, "Path", lambda p: real_path("/no/such/cpuinfo")
                        if p == "/proc/cpuinfo" else real_path(p))
    monkeypatch.setattr(hardware.platform, "system", lambda: "Darwin")
    values = {"machdep.cpu.brand_string": "Apple M2", "hw.optional.arm.FEAT_BF16": feat_bf16}
    monkeypatch.setattr(hardware, "_sysctl", lambda name: values[name])
    info = cpu_info()
    assert (info.model, info.flags, info.native_bf16) == ("Apple M2", flags, bool(flags))


def test_sysctl_is_empty_where_there_is_none() -> None:
    assert hardware._sysctl("no.such.faceparse.key") == ""


def test_without_hardware_bf16_fp32_is_chosen_without_timing_bf16(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ran = fake_cpu(monkeypatch, ("avx2",), bf16_speedup=99.0, nhwc_speedup=1.5)
    with caplog.at_level(logging.INFO, logger="faceparse.hardware"):
        policy = cpu_policy()
        cpu_policy()
    assert not policy.bf16 and policy.channels_last
    assert ran == ["nhwc torch.float32"]  # decided once per process
    assert "bf16 would be emulated" in policy.reason
    assert sum("CPU fast path" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize(("bf16_speedup", "nhwc_speedup", "bf16", "channels_last"), [
    (2.4, 1.3, True, True),    # AVX-512-BF16 EPYC: bf16 wins, NHWC pays
    (1.05, 1.02, False, True),  # a bf16 win inside the noise margin is no win; an NHWC
                                # tie keeps NHWC (whole nets gain more than one block)
    (1.05, 0.8, False, False),  # NHWC clearly slower: NCHW
])
def test_hardware_bf16_is_used_only_when_the_probe_shows_it_faster(
    monkeypatch: pytest.MonkeyPatch, bf16_speedup: float, nhwc_speedup: float, bf16: bool,
    channels_last: bool
) -> None:
    fake_cpu(monkeypatch, ("avx512f", "avx512_bf16"), bf16_speedup, nhwc_speedup)
    policy = cpu_policy()
    assert (policy.bf16, policy.channels_last) == (bf16, channels_last)
    assert f"{bf16_speedup:.2f}x" in policy.reason


def test_the_environment_forces_either_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    ran = fake_cpu(monkeypatch, ("avx2",), bf16_speedup=0.01, nhwc_speedup=9.0)
    monkeypatch.setenv(hardware.FORCE_BF16, "1")
    monkeypatch.setenv(hardware.FORCE_CHANNELS_LAST, "off")
    policy = cpu_policy()
    assert policy.bf16 and not policy.channels_last and not ran
    assert "bf16 forced by FACEPARSE_CPU_BF16" in policy.reason
    assert "NCHW forced by FACEPARSE_CPU_CHANNELS_LAST" in policy.reason
    forget_policy()
    monkeypatch.setenv(hardware.FORCE_BF16, "0")  # said as what it is, not "bf16 forced"
    assert cpu_policy().reason.startswith("fp32 forced by FACEPARSE_CPU_BF16")


@pytest.mark.parametrize("launcher", [{"WORLD_SIZE": "2"},
                                      {"SLURM_PROCID": "1", "SLURM_NTASKS": "4"}])
def test_launched_ranks_choose_from_the_flags_without_timing(
        monkeypatch: pytest.MonkeyPatch, launcher: dict[str, str]) -> None:
    """torchrun/srun ranks each decide for themselves: timed on one loaded machine, they
    could choose apart (bf16 beside fp32; NHWC beside NCHW, which DDP refuses)."""
    for name, value in launcher.items():
        monkeypatch.setenv(name, value)
    ran = fake_cpu(monkeypatch, ("avx512f", "avx512_bf16"), bf16_speedup=0.5, nhwc_speedup=0.5)
    policy = cpu_policy()
    assert (policy.bf16, policy.channels_last, ran) == (True, True, [])
    assert "not timed (one of" in policy.reason
    forget_policy()
    fake_cpu(monkeypatch, ("avx2",), bf16_speedup=9.0, nhwc_speedup=0.5)
    assert not cpu_policy().bf16  # emulated bf16 stays off, however many ranks


def test_a_pinned_choice_is_what_started_processes_make(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning's DDP ranks and a sweep's later jobs inherit the first process's choice."""
    ran = fake_cpu(monkeypatch, ("avx512f", "avx512_bf16"), bf16_speedup=2.0, nhwc_speedup=0.5)
    pinned = hardware.pin_cpu_policy()
    assert (pinned.bf16, pinned.channels_last) == (True, False)
    assert ran == ["bf16"] + [f"nhwc {torch.bfloat16}"] * hardware.PROBE_ROUNDS
    assert os.environ[hardware.FORCE_BF16] == "1"
    assert os.environ[hardware.FORCE_CHANNELS_LAST] == "0"
    forget_policy()  # a started process: the same environment, nothing decided yet
    fake_cpu(monkeypatch, ("avx512f", "avx512_bf16"), bf16_speedup=0.5, nhwc_speedup=9.0)
    child = cpu_policy()
    assert (child.bf16, child.channels_last) == (True, False)
    assert child.reason == f"as the process that started this one chose ({pinned.reason})"


@pytest.mark.parametrize(("readings", "bf16", "probes"), [
    ([2.0], True, 1), ([0.6, 0.9, 2.0], True, 3), ([0.5, 1.6], True, 2),
    ([0.5, 0.9, 1.1], False, 3)])
def test_a_losing_probe_reading_is_taken_again(monkeypatch: pytest.MonkeyPatch,
                                               readings: list[float], bf16: bool,
                                               probes: int) -> None:
    """Load slows whichever side it lands on: one low reading must not decide fp32."""
    fake_cpu(monkeypatch, ("avx512f", "avx512_bf16"), bf16_speedup=0.0, nhwc_speedup=1.0)
    left = list(readings)
    monkeypatch.setattr(hardware, "probe_bf16_speedup", lambda: left.pop(0))
    policy = cpu_policy()
    assert policy.bf16 is bf16 and len(readings) - len(left) == probes
    assert f"bf16 matmul {max(readings[:probes]):.2f}x fp32" in policy.reason


def test_pinning_keeps_what_the_user_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cpu(monkeypatch, ("avx512f", "avx512_bf16"), bf16_speedup=2.0, nhwc_speedup=9.0)
    monkeypatch.setenv(hardware.FORCE_BF16, "0")
    assert not hardware.pin_cpu_policy().bf16
    assert os.environ[hardware.FORCE_BF16] == "0"
    assert os.environ[hardware.FORCE_CHANNELS_LAST] == "1"


def test_a_bad_forcing_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hardware.FORCE_BF16, "maybe")
    with pytest.raises(ValueError, match=r"'maybe': use 1 \(or true, yes, on\), 0"):
        cpu_policy()


def test_the_probes_time_real_kernels() -> None:
    assert hardware.probe_bf16_speedup(size=64) > 0
    assert hardware.probe_channels_last_speedup() > 0


def test_interleaved_ratio_is_the_median_of_per_pair_ratios(monkeypatch) -> None:
    """On a fake clock the two callables advance (no real sleeps for a busy machine to
    stretch): 2 s against 1 s per pair, one pair hit by a 50 s stall, read as 2 exactly."""
    clock = [0.0]
    calls = {"first": 0}
    monkeypatch.setattr(hardware.time, "perf_counter", lambda: clock[0])

    def first() -> None:
        calls["first"] += 1
        clock[0] += 50.0 if calls["first"] == 3 else 2.0  # the stall: one pair, not the median

    def second() -> None:
        clock[0] += 1.0

    assert hardware._interleaved_ratio(first, second) == 2.0
    assert calls["first"] == 6  # a warm-up call, then five timed pairs
