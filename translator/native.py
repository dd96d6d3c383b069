"""The one compiled kernel: TopKLogNorm (translator/csrc/top_k_log_norm.cc), for the searches.

Each search step needs, from the vocabulary-wide logits of every hypothesis, the k best
tokens and the log-normaliser. TensorFlow's CPU ops take five passes over the logits for
that (cast, chunk maxima, two top-k, softmax), as long as the output matmul itself; the
kernel reads each row once (beam 5 at 1,280 rows: 5 ms against 14 ms). It is compiled on
first use with the machine's C++ compiler against the installed TensorFlow (about 10 s,
once per machine and TensorFlow version) and cached under $TRANSLATOR_CACHE (default
~/.cache/translator). Without a compiler, or with TRANSLATOR_NATIVE=0, ``top_k_log_norm``
returns None and translator.search uses TensorFlow's ops instead: same tokens (up to the
order of exactly tied logits), log-probs within 1e-5.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import tensorflow as tf

SOURCE = Path(__file__).parent / "csrc" / "top_k_log_norm.cc"
_FLAGS = ["-shared", "-fPIC", "-O3", "-march=native", "-w"]
_COMPILE_TIMEOUT_S = 300

_lock = threading.Lock()
_state: dict[str, Any] = {}  # "module": loaded op library or None, once decided


def enabled() -> bool:
    """False when TRANSLATOR_NATIVE is set to 0 (or false/no/off)."""
    return os.environ.get("TRANSLATOR_NATIVE", "1").strip().lower() not in ("0", "false", "no",
                                                                            "off")


def cache_dir() -> Path:
    root = os.environ.get("TRANSLATOR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "translator")
    return Path(root)


def _cpu_flags() -> str:
    """The machine's CPU feature flags (the library is built for this machine's CPU)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def library_path(compiler: str) -> Path:
    """Where the library for this source, TensorFlow, compiler and CPU is cached."""
    key = "\n".join([SOURCE.read_text(), tf.__version__, compiler, " ".join(_FLAGS),
                     " ".join(tf.sysconfig.get_compile_flags()), platform.machine(),
                     _cpu_flags(), sys.version])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / f"top_k_log_norm-{digest}.so"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def build(compiler: str, target: Path) -> None:
    """Compiles SOURCE into target (written under a temporary name, then renamed, so a
    concurrent or interrupted build never leaves a half-written library)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        command = [compiler, *_FLAGS, str(SOURCE), "-o", tmp,
                   *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags()]
        done = subprocess.run(command, capture_output=True, text=True,
                              timeout=_COMPILE_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} exited with {done.returncode}:\n"
                               f"{done.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load() -> Any | None:
    compiler = _compiler()
    if compiler is None:
        _warn("no C++ compiler found (set CXX)")
        return None
    target = library_path(compiler)
    try:
        if not target.exists():
            print(f"translator: compiling the search kernel {SOURCE.name} (once, ~10 s) "
                  f"into {target.parent}", file=sys.stderr, flush=True)
            build(compiler, target)
        return tf.load_op_library(str(target))
    except Exception as error:  # noqa: BLE001 -- any failure means: use the TF ops
        _warn(f"{type(error).__name__}: {error}")
        return None


def _warn(reason: str) -> None:
    print(f"translator: the compiled search kernel is not available ({reason}); searching "
          "with TensorFlow ops instead (same results, slower). TRANSLATOR_NATIVE=0 skips it.",
          file=sys.stderr, flush=True)


def library() -> Any | None:
    """The loaded op library, or None (disabled, no compiler, or the build failed; the
    reason is printed once)."""
    if not enabled():
        return None
    with _lock:
        if "module" not in _state:
            _state["module"] = _load()
        return _state["module"]


@tf.autograph.experimental.do_not_convert
def top_k_log_norm(logits: Any, k: int) -> tuple[Any, Any, Any] | None:
    """logits [N, V] float32 or bfloat16 -> (values float32 [N, k], indices int32 [N, k],
    log_norm float32 [N]), the top k by value (the lower index first among equal values),
    or None when the kernel is not available."""
    lib = library()
    if lib is None:
        return None
    return tuple(lib.top_k_log_norm(logits, k=k))
