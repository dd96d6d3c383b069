"""`python -m translator info` (also `translator-info`): what this installation runs on and
with, for bug reports: versions, the CPU and its features that matter, whether the compiled
kernels are on (and if not, why), the precision training would choose, and the caches.
`--rebuild` tries the kernels' build again where it failed."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Sequence

from translator import __version__, paths
from translator.kernels import build as kernel_build, cpu


def report(rebuild: bool = False) -> list[tuple[str, str]]:
    """(label, value) rows; loads (and if needed builds) the kernels to say whether they
    are on."""
    import keras
    import tensorflow as tf

    from translator.kernels import library as native
    from translator.model_folder import resolve_precision

    if rebuild:
        native.library(retry=True)
    compiler = kernel_build.find_compiler()
    native.library()
    plan = native.build_plan()
    precision = resolve_precision("auto")
    dtype = "bfloat16" if precision == "mixed_bfloat16" else "float32"
    rows = [
        ("translator", f"{__version__} ({paths.PACKAGE_DIR})"),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("tensorflow", tf.__version__),
        ("keras", keras.__version__),
        ("cpu", f"{cpu.model()} ({platform.machine()}), {_cpu_count()} CPUs"),
        ("cpu features", " ".join(cpu.notable_features()) or "none of note"),
        ("compiler", f"{compiler}: {kernel_build.compiler_version(compiler)}"
         if compiler else "none found (install g++ or set CXX)"),
        ("kernels", native.status()),
    ]
    if plan is not None:
        rows.append(("kernel flags", " ".join(plan.flags)))
        rows.append(("kernel library", str(plan.library)))
    if native.library() is not None:
        rows.append(("decoder step", _decoder_step(native.fused_step(dtype),
                                                   native.fused_step_timing(dtype), dtype)))
    rows += [
        ("training precision", f"auto -> {precision}"),
        ("cache", str(paths.cache_root())),
        ("kernel cache", str(paths.kernel_cache())),
        ("corpus cache", str(paths.corpus_cache())),
    ]
    return rows


def _decoder_step(fused: bool, timing: dict | None, dtype: str) -> str:
    """Which decoder step the searches run in dtype, and the measurement that chose it."""
    chosen = "fused (LstmStep, ProjectTopK)" if fused else "unfused (TensorFlow's matmuls)"
    if timing is None:
        return f"{chosen}, forced by TRANSLATOR_FUSED_STEP"
    if "error" in timing:
        return f"{chosen}: timing the fused step failed ({timing['error']})"
    return (f"{chosen}: measured {sum(timing['fused_ms']):.1f} ms fused against "
            f"{sum(timing['unfused_ms']):.1f} ms unfused per step in {dtype} at a 512-unit "
            "decoder's sizes")


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m translator info", description=__doc__)
    parser.add_argument("--rebuild", action="store_true",
                        help="try the kernels' build again where it failed (a built library "
                        "is kept), and time the fused decoder step again")
    args = parser.parse_args(argv)
    rows = report(rebuild=args.rebuild)
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
