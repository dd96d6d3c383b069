"""Keeps TensorFlow's C++ start-up lines off the terminal.

Importing TensorFlow prints lines such as 'All log messages before absl::InitializeLog()
is called are written to STDERR', the oneDNN notice and 'Could not find cuda drivers'
straight to file descriptor 2, before TF_CPP_MIN_LOG_LEVEL is read. `import translator`
installs a hook that runs TensorFlow's import (and its device probe) with descriptor 2
piped through a small filter process: it drops those known lines and passes every other
line on at once. Being a process of its own, it still passes on what a crashing import
wrote last. Where the filter cannot be set up, TensorFlow is imported as usual.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import subprocess
import sys
from contextlib import contextmanager

# Exact notices (INFO and WARNING level, or the CUDA probe on a machine without a GPU).
STARTUP_NOISE = (
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|oneDNN custom operations are on"
    r"|Could not find cuda drivers on your machine"
    r"|failed call to cuInit"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|TF-TRT Warning: Could not find TensorRT"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|To enable the following instructions: .* in other operations, rebuild TensorFlow"
)

# The filter: stdin line by line to stdout, less the lines matching argv[1].
_FILTER = (
    "import re, sys\n"
    "noise = re.compile(sys.argv[1].encode())\n"
    "for line in sys.stdin.buffer:\n"
    "    if not noise.search(line):\n"
    "        sys.stdout.buffer.write(line)\n"
    "        sys.stdout.buffer.flush()\n"
)


@contextmanager
def startup_lines_filtered():
    """Runs the body with file descriptor 2 piped through the filter process (see the
    module docstring); without it (no interpreter to run, descriptors unavailable) the
    body runs unfiltered."""
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        read_end, write_end = os.pipe()
        try:
            process = subprocess.Popen(
                [sys.executable, "-S", "-c", _FILTER, STARTUP_NOISE], stdin=read_end,
                stdout=saved, stderr=subprocess.DEVNULL, close_fds=True)
        finally:
            os.close(read_end)
        os.dup2(write_end, 2)
        os.close(write_end)
    except (OSError, ValueError, subprocess.SubprocessError):
        os.close(saved)
        yield
        return
    try:
        yield
    finally:
        if sys.stderr is not None:
            sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last write end closes: the filter drains and ends
        os.close(saved)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # a child process holds the pipe: let it be
            pass


class _QuietLoader(importlib.abc.Loader):
    """Wraps tensorflow's own loader: its import and device probe run filtered."""

    def __init__(self, loader, finder: _QuietFinder):
        self.loader, self.finder = loader, finder

    def __getattr__(self, name):  # is_package, get_resource_reader, ...: the wrapped one's
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.finder.remove()
        with startup_lines_filtered():
            self.loader.exec_module(module)
            # the CUDA probe ('failed call to cuInit') runs on the first look at devices;
            # listing them does not fix the thread settings, which stay changeable
            try:
                module.config.list_physical_devices()
            except Exception:  # noqa: BLE001 -- a probe only: the import itself succeeded
                pass


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Hands the top-level tensorflow package _QuietLoader, its spec found by the other
    finders. Stays installed until tensorflow is actually imported (a find_spec probe
    alone does not use it up)."""

    def __init__(self):
        self.busy = False

    def find_spec(self, name, path, target=None):
        if name != "tensorflow" or self.busy:
            return None
        self.busy = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.busy = False
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader, self)
        return spec

    def remove(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)


def install() -> None:
    """Makes the next `import tensorflow` quiet (nothing to do if it was imported already)."""
    if "tensorflow" not in sys.modules and not any(
            isinstance(finder, _QuietFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietFinder())
