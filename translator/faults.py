"""Crash points for the kill -9 tests (tests/test_training.py).

With TRANSLATOR_CRASH_AT=NAME[:K] in the environment, the K-th arrival (default: the
first) at `crash_point(NAME)` kills the process with SIGKILL, as the OOM killer or a power
cut would: no `finally`, no clean-up. Without it (always, outside those tests) a crash
point does nothing.
"""

from __future__ import annotations

import collections
import os
import signal

ENV = "TRANSLATOR_CRASH_AT"
_arrivals: collections.Counter = collections.Counter()


def crash_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _arrivals[name] += 1
    if _arrivals[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
