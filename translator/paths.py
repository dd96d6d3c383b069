"""Where the project caches what it makes once: corpus files and compiled kernels.

In a source checkout (an editable install, or running from the clone) the cache is the
checkout's own data/ folder, beside the code. After a normal `pip install` the package
sits in site-packages, which may not be writable and is no place for data: the cache is
then the user's cache directory ($XDG_CACHE_HOME/lstm-translator, by default
~/.cache/lstm-translator). $TRANSLATOR_CACHE, when set, wins over both.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def cache_root(package_dir: Path = PACKAGE_DIR) -> Path:
    """$TRANSLATOR_CACHE; else <checkout>/data when package_dir lies in a source checkout
    (a setup.cfg beside it); else the user's cache directory."""
    chosen = os.environ.get("TRANSLATOR_CACHE")
    if chosen:
        return Path(chosen).expanduser()
    checkout = package_dir.parent
    if (checkout / "setup.cfg").is_file() and (checkout / "translator").is_dir():
        return checkout / "data"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "lstm-translator"


def corpus_cache() -> Path:
    """The corpus files' cache: <cache root>/corpora."""
    return cache_root() / "corpora"


def kernel_cache() -> Path:
    """The compiled kernels' cache: <cache root>/kernels."""
    return cache_root() / "kernels"
