"""Compiling the kernels (translator/kernels/csrc/*.cc) into one op library, decided once
per machine.

The library is built on first use with the machine's C++ compiler against the installed
TensorFlow, for an instruction set chosen explicitly (translator.kernels.cpu.isa_flags: the x86-64
level the CPU has, plus AVX-512 BF16 where present; $TRANSLATOR_MARCH names another
target, e.g. x86-64-v3 for a cache that machines of different CPUs share). Extensions that
a target turns on but TensorFlow's headers cannot take (AVX-512 FP16 with GCC 12) are
switched off.

Everything is keyed by the sources, TensorFlow, the compiler and its version, the flags and
(unless $TRANSLATOR_MARCH is set) the CPU, and cached in translator.paths.kernel_cache():

    kernels-<key>.so           the library, written under a temporary name and renamed
    kernels-<key>.log          the compiler's full output of the last build
    kernels-<key>.failed       the marker of a failed build: later processes do not retry
                               it (`python -m translator info --rebuild` does); a compiler
                               killed or timed out leaves none
    kernels-<key>.lock         concurrent processes wait on it for the one that builds
    kernels-<key>.tuning.json  translator.kernels.tuning's timing of the fused step
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from translator.kernels import cpu
from translator.paths import kernel_cache

SOURCE_DIR = Path(__file__).resolve().parent / "csrc"  # *.cc compiled together; *.h they include
COMPILE_TIMEOUT_S = 300
# Macros that a CPU target defines and TensorFlow's bundled Eigen cannot compile with (it
# then includes arch/AVX512/PacketMathFP16.h, which GCC 12 rejects), and the flag that
# turns each extension off. The kernels use none of them.
_BREAKING_MACROS = {"__AVX512FP16__": "-mno-avx512fp16"}
# A compiler's output lines that say what went wrong, and those that say it was killed or
# ran out of memory (a failure of the moment: no marker, the next process tries again).
_ERROR_LINE = re.compile(r": (fatal )?error: ")
_TRANSIENT = re.compile(
    r"Killed signal|killed by signal|out of memory|virtual memory exhausted|timed out")


def env_switch(name: str, default: str) -> bool | None:
    """An on/off environment variable: False for 0/false/no/off, True for anything else
    but 'auto' and '', which (like an unset variable with default 'auto') give None."""
    value = os.environ.get(name, default).strip().lower()
    if value in ("", "auto"):
        return None
    return value not in ("0", "false", "no", "off")


class BuildError(RuntimeError):
    """A compiler run failed; the message is one line, the full output is in the log."""


@dataclass(frozen=True)
class Build:
    """One build: the compiler, its flags and where the library, log and marker go."""

    compiler: str
    flags: tuple[str, ...]
    library: Path

    @property
    def log(self) -> Path:
        return self.library.with_suffix(".log")

    @property
    def marker(self) -> Path:
        return self.library.with_suffix(".failed")

    @property
    def tuning(self) -> Path:
        """Where translator.kernels.tuning caches the fused step's timing for this library."""
        return self.library.with_suffix(".tuning.json")


def find_compiler() -> str | None:
    """$CXX, else c++, g++ or clang++ on the PATH; None when there is none."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def sources() -> list[Path]:
    return sorted(SOURCE_DIR.glob("*.cc"))


def _tf_flags(kind: str) -> list[str]:
    import tensorflow as tf

    return tf.sysconfig.get_compile_flags() if kind == "compile" else tf.sysconfig.get_link_flags()


def _run(command: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          errors="replace", timeout=timeout)


def compiler_version(compiler: str) -> str:
    """The first line of `compiler --version` (part of the cache key)."""
    try:
        lines = _run([compiler, "--version"]).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return lines[0] if lines else "unknown"


def target_flags(compiler: str, isa: list[str] | None = None) -> list[str]:
    """The flags for compiling the kernels: -O3, the instruction set (isa; default
    $TRANSLATOR_MARCH as -march, else cpu.isa_flags()), and -mno-... for each extension
    the target defines that TensorFlow's headers break on (found by asking the compiler
    which macros the target defines). A compiler that does not know an x86-64 level's
    name (GCC before 11) is given the level's features one by one."""
    if isa is None:
        march = os.environ.get("TRANSLATOR_MARCH")
        isa = [f"-march={march}"] if march else cpu.isa_flags()
    macros = _predefined(compiler, isa)
    level = isa[0].removeprefix("-march=") if isa else ""
    if macros is None and level.startswith("x86-64-v"):
        isa = [*cpu.spelled_out(level), *isa[1:]]
        macros = _predefined(compiler, isa)
    off = [flag for macro, flag in _BREAKING_MACROS.items()
           if f"#define {macro} " in (macros or "")]
    return ["-fPIC", "-O3", *isa, *off, "-w"]


def _predefined(compiler: str, isa: list[str]) -> str | None:
    """The macros the compiler predefines for isa, or None when it refuses the flags."""
    try:
        result = _run([compiler, *isa, "-dM", "-E", "-x", "c++", os.devnull])
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def plan(compiler: str) -> Build:
    """The build for this machine: its flags, and the library's path keyed by everything
    that changes the binary or whether it builds."""
    import tensorflow as tf

    flags = tuple(target_flags(compiler))
    texts = [f.read_text() for f in sorted(SOURCE_DIR.glob("*.h")) + sources()]
    # the CPU is part of the key unless TRANSLATOR_MARCH names the target: then the flags
    # decide the binary, and machines of different CPUs can share one cache
    machine = "" if os.environ.get("TRANSLATOR_MARCH") else " ".join(sorted(cpu.features()))
    key = "\n".join([*texts, tf.__version__, compiler, compiler_version(compiler),
                     " ".join(flags), " ".join(_tf_flags("compile")), platform.machine(),
                     machine, sys.version])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Build(compiler, flags, kernel_cache() / f"kernels-{digest}.so")


def compile_objects(compiler: str, flags: list[str] | tuple[str, ...], out_dir: Path,
                    log: list[str]) -> list[Path]:
    """Compiles every source to an object file in out_dir, as many at once as there are
    CPUs (the compiler is single-threaded; each run over TensorFlow's headers takes most
    of a gigabyte). Each run's output is appended to log; BuildError names the first
    failure and its first error line. (Most of a file's time is parsing TensorFlow's
    headers; GCC's precompiled header of them is 430 MB and takes longer to write.)"""
    common = [*flags, *_tf_flags("compile")]
    lanes = max(1, os.cpu_count() or 1)
    objects, running, failures = [], [], []
    for source in sources():
        objects.append(out_dir / f"{source.stem}.o")
        command = [compiler, *common, "-c", str(source), "-o", str(objects[-1])]
        if len(running) == lanes:
            failures.append(_finish(*running.pop(0), log))
        running.append((source.name, command, _start(command)))
    failures += [_finish(*run, log) for run in running]
    failures = [failure for failure in failures if failure]
    if failures:
        raise BuildError(failures[0])
    return objects


def _start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")


def _finish(name: str, command: list[str], process: subprocess.Popen, log: list[str]) -> str:
    """Waits for one compiler run and logs it; '' when it succeeded, else one line: the
    run's first error (at most 300 characters)."""
    try:
        output, _ = process.communicate(timeout=COMPILE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        log.append(f"$ {' '.join(command)}\n{output}\ntimed out after {COMPILE_TIMEOUT_S} s\n")
        return f"{name}: timed out after {COMPILE_TIMEOUT_S} s"
    log.append(f"$ {' '.join(command)}\n{output}\nexit status {process.returncode}\n")
    if process.returncode == 0:
        return ""
    if process.returncode < 0:
        return f"{name}: the compiler was killed by signal {-process.returncode}"
    lines = output.strip().splitlines() or ["no output"]
    first = next((line for line in lines if _ERROR_LINE.search(line)), lines[-1]).strip()
    return f"{name}: {Path(command[0]).name} exited with {process.returncode}: {first[:300]}"


def build(plan_: Build) -> None:
    """Compiles and links plan_.library under a lock. The library is written under a
    temporary name and renamed, so a concurrent or interrupted build never leaves a
    half-written one. A failure writes the log and the marker, then raises BuildError."""
    target = plan_.library
    target.parent.mkdir(parents=True, exist_ok=True)
    log: list[str] = [f"CPU: {cpu.model()} ({platform.machine()})\n"]
    try:
        with tempfile.TemporaryDirectory(dir=target.parent) as work:
            objects = compile_objects(plan_.compiler, plan_.flags, Path(work), log)
            tmp = Path(work) / target.name
            link = [plan_.compiler, "-shared", *map(str, objects), "-o", str(tmp),
                    *_tf_flags("link")]
            failure = _finish("link", link, _start(link), log)
            if failure:
                raise BuildError(failure)
            os.replace(tmp, target)
    except BuildError as error:
        plan_.log.write_text("".join(log))
        if not _TRANSIENT.search(str(error)):
            plan_.marker.write_text(f"{error}\n")
        raise
    plan_.log.write_text("".join(log))
    plan_.marker.unlink(missing_ok=True)


class _Lock:
    """An exclusive lock on a file beside the library, so that one process builds while
    the others wait (fcntl where it exists). Where the lock cannot be had (no fcntl, a
    read-only folder, a file system without locks) the build goes on without it: the
    library is renamed into place whole either way."""

    def __init__(self, path: Path):
        self.path = path
        self.file = None

    def __enter__(self):
        try:
            import fcntl

            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "a")
            fcntl.flock(self.file, fcntl.LOCK_EX)
        except (ImportError, OSError):
            if self.file is not None:
                self.file.close()
                self.file = None
        return self

    def __exit__(self, *exc):
        if self.file is not None:
            self.file.close()  # closing releases the lock


def ensure_built(plan_: Build, retry: bool = False) -> None:
    """Builds plan_.library unless it exists. A failed build's marker is final (BuildError
    at once, naming the log) unless retry; the compiling line is printed once."""
    if plan_.library.exists() and not retry:
        return
    with _Lock(plan_.library.with_suffix(".lock")):
        if retry:
            plan_.marker.unlink(missing_ok=True)
        if plan_.library.exists():
            return
        if plan_.marker.exists():
            raise BuildError(f"failed before: {plan_.marker.read_text().strip()}")
        print(f"translator: compiling the kernels (once for this machine, ~30 s) into "
              f"{plan_.library.parent}", file=sys.stderr, flush=True)
        build(plan_)
