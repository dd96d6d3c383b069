"""Atomic writes: a temporary file in the same folder, then a rename.

A crash or Ctrl-C never leaves a half-written file under the final name. Temporaries are
named `.tmp-<pid>.<host>-<random>-<final name>`; one that a killed process of this host
left behind (kill -9 runs no clean-up) is removed by the next write to the same final
name. Another host's temporaries (a folder shared over the network) are left alone: its
process ids mean nothing here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yields a temporary path beside `path`; renames it to `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(path.parent, path.name)
    # The temporary name ends with the final name: Keras checks suffixes like .weights.h5.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_prefix(), suffix=f"-{path.name}")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give files the usual mode
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextmanager
def atomic_directory(path: Path | str) -> Iterator[Path]:
    """Yields a temporary folder beside `path`; if the block succeeds, it replaces
    `path` (a folder, if there is one): readers see the old folder whole or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(path.parent, path.name)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_prefix(), suffix=f"-{path.name}"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32]


def _prefix() -> str:
    return f".tmp-{os.getpid()}.{_HOST}-"


def remove_orphans(folder: Path, name: str | None = None) -> list[Path]:
    """Removes the temporaries in `folder` for the file `name` (default: for any file)
    that a dead process of this host was writing; returns them."""
    pattern = re.compile(r"\.tmp-(\d{1,10})\.([A-Za-z0-9]*)-[a-z0-9_]+-"
                         + (re.escape(name) if name else ".+"), re.ASCII)
    removed = []
    for tmp in Path(folder).glob(".tmp-*"):
        match = pattern.fullmatch(tmp.name)
        if match and match[2] == _HOST and not _alive(int(match[1])):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process; not a pid here
        return True
    return True


@contextmanager
def atomic_open(path: Path | str, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_json(path: Path | str, obj: Any) -> Path:
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=False)
        f.write("\n")
    return Path(path)
