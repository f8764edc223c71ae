"""Replacing a file so that a reader, or a crash, sees the old bytes or the new ones, never a mix."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def write_atomically(path: Path, data: bytes, *, sync_directory: bool = True) -> None:
    """Write ``data`` to a temporary name beside ``path``, fsync it, rename it over ``path``, and
    (``sync_directory``) fsync the directory so the rename itself survives a power loss. The
    temporary name is unique per process and thread, so concurrent writers never share one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync_directory:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
