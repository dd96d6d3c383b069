"""What this machine's CPU is and can do: its model name, the instruction-set features that
matter to training precision and to the compiled kernels, and the instruction set the
kernels are compiled for. No TensorFlow import: the build, `python -m translator info` and
the benchmarks all read the CPU from here.
"""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path

# The features worth naming in a bug report: what the kernels' vectors and bfloat16 dot
# products use (x86: AVX2/FMA, AVX-512, AVX-512 BF16; ARM: NEON is always there), what
# TensorFlow's bfloat16 matmuls can use (AMX), and what breaks TensorFlow's headers (FP16).
NOTABLE = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_fp16",
           "amx_tile", "amx_bf16", "asimd", "asimddp", "bf16", "sve")

# x86-64 micro-architecture levels (the psABI's): each level's features as /proc/cpuinfo
# names them (each level also needs the ones below it), and the same level spelled out as
# GCC flags for compilers older than the level names (GCC 11, Clang 12).
_X86_LEVELS = (
    ("x86-64-v2", {"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"},
     ["-mcx16", "-msahf", "-mpopcnt", "-msse3", "-msse4.1", "-msse4.2", "-mssse3"]),
    ("x86-64-v3", {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"},
     ["-mavx", "-mavx2", "-mbmi", "-mbmi2", "-mf16c", "-mfma", "-mlzcnt", "-mmovbe",
      "-mxsave"]),
    ("x86-64-v4", {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"},
     ["-mavx512f", "-mavx512bw", "-mavx512cd", "-mavx512dq", "-mavx512vl"]),
)


@lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def model() -> str:
    """The CPU's model name, e.g. 'AMD EPYC 9R14' ('unknown' where the system hides it)."""
    for line in _cpuinfo().splitlines():
        if line.startswith(("model name", "Model", "Hardware")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def features() -> frozenset[str]:
    """The CPU's feature flags as the kernel reports them (x86 'flags', ARM 'Features')."""
    for line in _cpuinfo().splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def notable_features() -> list[str]:
    """The features in NOTABLE that this CPU has, in NOTABLE's order."""
    have = features()
    return [name for name in NOTABLE if name in have]


def has_bfloat16_math() -> bool:
    """True where bfloat16 matmuls run at full speed on x86: AVX-512 BF16 or AMX."""
    return bool({"avx512_bf16", "amx_bf16"} & features())


def x86_level(have: frozenset[str]) -> str:
    """The highest x86-64 level whose features (and those of the levels below) are all in
    have; 'x86-64' for the baseline."""
    level, needed = "x86-64", set()
    for name, needs, _ in _X86_LEVELS:
        needed |= needs
        if not needed <= have:
            break
        level = name
    return level


def spelled_out(level: str) -> list[str]:
    """-march=x86-64 plus the feature flags of level and the levels below it: the same
    instruction set for compilers that do not know the level's name."""
    flags = ["-march=x86-64"]
    for name, _, level_flags in _X86_LEVELS:
        if level == "x86-64":
            break
        flags += level_flags
        if name == level:
            break
    return flags


def isa_flags(machine: str | None = None, have: frozenset[str] | None = None) -> list[str]:
    """The compiler flags naming the instruction set the kernels are built for on this CPU:
    the highest x86-64 level it fully has, plus AVX-512 BF16 where present (the bfloat16
    dot products in csrc/gemm.h), tuned for this CPU; on 64-bit ARM, ARMv8-A, whose NEON
    the kernels' vectors compile to. Only features the kernels use are named, so a CPU's
    newer extensions (AVX-512 FP16, AMX) never reach TensorFlow's headers."""
    machine = machine or platform.machine()
    have = features() if have is None else have
    if machine in ("x86_64", "AMD64"):
        level = x86_level(have)
        extra = ["-mavx512bf16"] if level == "x86-64-v4" and "avx512_bf16" in have else []
        return [f"-march={level}", *extra, "-mtune=native"]
    if machine in ("aarch64", "arm64"):
        return ["-march=armv8-a"]
    return []
