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

# x86-64 micro-architecture levels (the psABI's), as /proc/cpuinfo names their features.
_X86_LEVELS = (
    ("x86-64-v4", {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}),
    ("x86-64-v3", {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "xsave"}),
    ("x86-64-v2", {"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"}),
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
    """True where bfloat16 matmuls run at full speed: AVX-512 BF16 or AMX (x86), BF16 (ARM)."""
    return bool({"avx512_bf16", "amx_bf16", "bf16"} & features())


def isa_flags(machine: str | None = None, have: frozenset[str] | None = None) -> list[str]:
    """The compiler flags naming the instruction set the kernels are built for on this CPU:
    the highest x86-64 level it fully has, plus AVX-512 BF16 where present (the bfloat16
    dot products in csrc/gemm.h); on 64-bit ARM, ARMv8.2-A where the CPU has its dot
    product and half-precision extensions, else ARMv8-A (NEON either way). Only features
    the kernels use are named, so a CPU's newer extensions (AVX-512 FP16, AMX) never reach
    TensorFlow's headers."""
    machine = machine or platform.machine()
    have = features() if have is None else have
    if machine in ("x86_64", "AMD64"):
        level = next((name for name, needs in _X86_LEVELS if needs <= have), "x86-64")
        extra = ["-mavx512bf16"] if level == "x86-64-v4" and "avx512_bf16" in have else []
        return [f"-march={level}", *extra, "-mtune=native"]
    if machine in ("aarch64", "arm64"):
        return ["-march=armv8.2-a" if {"asimddp", "asimdhp"} <= have else "-march=armv8-a"]
    return []
