"""Owner-only files and directories, whatever the umask.

The store, the exporter queues and the dead letters hold spans, logs and hyperparameters of
whatever ran on the node: nobody but the agent's user should read them. Outside the systemd
unit (``UMask=0077``) the umask is usually 022, so the modes are set explicitly rather than
left to ``open(2)``.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def make_private_dirs(path: str | os.PathLike[str]) -> None:
    """``mkdir -p path``; each directory it creates is ``0700``. Existing ones keep their mode
    (``~/.local/share`` or ``/var/lib`` are not ours to change).

    Raises ``OSError`` as ``mkdir`` does (``NotADirectoryError`` when a component is a file).
    """
    p = Path(path)
    missing: list[Path] = []
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            if not stat.S_ISDIR(os.stat(d).st_mode):
                err = errno.ENOTDIR
                raise NotADirectoryError(err, os.strerror(err), str(d)) from None
            continue  # another process created it first
        # mkdir's mode is filtered by the umask, which can take the owner's bits too.
        os.chmod(d, DIR_MODE)


def open_private(path: str | os.PathLike[str], flags: int) -> int:
    """``os.open(path, flags | O_CREAT | O_CLOEXEC)`` for a file only the agent uses: the file
    is ``0600`` afterwards, new or not (older agents created some of them ``0644``)."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd
