"""Keeps TensorFlow's C++ start-up lines off the terminal.

Importing TensorFlow prints lines such as 'All log messages before absl::InitializeLog()
is called are written to STDERR', the oneDNN notice, 'Could not find cuda drivers' and
'failed call to cuInit' straight to file descriptor 2, before TF_CPP_MIN_LOG_LEVEL is
read. `import translator` installs a hook that runs TensorFlow's import (and its device
probe) with descriptor 2 sent to a temporary file, then writes back every line that is not
one of those known start-up lines: a real error still reaches the terminal.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile
from contextlib import contextmanager

STARTUP_NOISE = re.compile(
    r"absl::InitializeLog\(\)|oneDNN custom operations are on|Could not find cuda drivers"
    r"|failed call to cuInit|Unable to register cu(DNN|FFT|BLAS) factory|TF-TRT Warning"
    r"|computation placer already registered|cpu_feature_guard|This TensorFlow binary is "
    r"optimized|To enable the following instructions|rebuild TensorFlow with the appropriate")


@contextmanager
def startup_lines_filtered():
    """Runs the body with file descriptor 2 captured; afterwards writes the captured lines
    that are not TensorFlow start-up noise to stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(True)
                    if not STARTUP_NOISE.search(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    """Wraps tensorflow's own loader: its import and device probe run filtered."""

    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        with startup_lines_filtered():
            self.loader.exec_module(module)
            # the CUDA probe ('failed call to cuInit') runs on the first look at devices;
            # listing them does not fix the thread settings, which stay changeable
            try:
                module.config.list_physical_devices()
            except Exception:  # noqa: BLE001 -- a probe only: the import itself succeeded
                pass


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds the top-level tensorflow package once and hands it _QuietLoader."""

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def install() -> None:
    """Makes the next `import tensorflow` quiet (nothing to do if it was imported already)."""
    if "tensorflow" not in sys.modules and not any(
            isinstance(finder, _QuietFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietFinder())
