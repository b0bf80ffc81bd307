"""Small tmpfs mounts for the disk-full and read-only cases (a real filesystem, not a mock).

Mounting needs root (CI runs as root); elsewhere the tests that need one are skipped and say
why.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _mount(*args: str) -> None:
    r = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(
            "needs a tmpfs mount (root, CAP_SYS_ADMIN), not permitted here: "
            + (r.stderr.strip() or f"mount exited {r.returncode}")
        )


@contextlib.contextmanager
def mounted_tmpfs(path: Path, size: str = "1m") -> Iterator[Path]:
    """A tmpfs of ``size`` (mount(8) syntax) at ``path`` for the duration of the block."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size},mode=0700", "wattspan-test", str(path))
    try:
        yield path
    finally:
        r = subprocess.run(["umount", str(path)], capture_output=True, check=False)
        if r.returncode != 0:
            # Something (a failed test's open store) still holds a file there.
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def remount(path: Path, mode: str) -> None:
    """``mode`` is ``ro`` or ``rw``."""
    _mount("-o", f"remount,{mode}", str(path))


def fill(directory: Path, name: str = "filler") -> Path:
    """Write a file in ``directory`` until the filesystem is full; returns it."""
    path = directory / name
    chunk = b"\0" * 4096
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    finally:
        os.close(fd)
    return path


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
