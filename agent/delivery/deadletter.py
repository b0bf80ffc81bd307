"""Dead-letter file: data a receiver rejected for good, kept for inspection and replay.

One JSON object per line (JSONL) so that the file stays readable with ``jq`` and a replay
tool can pick entries apart. The file is bounded: when it would grow past half of
``max_bytes`` it is renamed to ``<name>.1`` (replacing the previous one), so at most
``max_bytes`` are used and the newest rejections are always kept. Both files are owner-only
(0600), and so is a directory created for them (0700): they hold the rejected data verbatim.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wattspan.agent.private import make_private_dirs, open_private


class DeadLetterFile:
    """Append-only, size-bounded JSONL file of rejected batches."""

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self.entries_total = 0

    def write(self, entry: Mapping[str, Any]) -> None:
        """Append ``entry`` (JSON-serialisable) with a ``time`` field (RFC 3339, UTC).

        The line is fsynced: rejections are rare and this file is the only copy left.
        """
        now = time.time()
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            + f".{int(now % 1 * 1000):03d}Z",
            **entry,
        }
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        with self._lock:
            make_private_dirs(self.path.parent)
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(line) > self.max_bytes // 2:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            fd = open_private(self.path, os.O_WRONLY | os.O_APPEND)
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            self.entries_total += 1

    def read(self) -> list[dict[str, Any]]:
        """All entries, oldest first (the rotated file included). Meant for tools and tests."""
        out: list[dict[str, Any]] = []
        for p in (self.path.with_name(self.path.name + ".1"), self.path):
            try:
                text = p.read_text(encoding="utf-8")
            except FileNotFoundError:
                continue
            out.extend(json.loads(line) for line in text.splitlines() if line.strip())
        return out
