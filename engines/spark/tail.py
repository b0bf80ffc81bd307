"""Following the event logs of a directory while their applications run.

Spark writes one of two layouts into ``spark.eventLog.dir``:

* a single file ``APP_ID[_ATTEMPT]`` (Spark 3 by default), named ``....inprogress`` while
  the application runs and renamed when it ends;
* a rolling log (``spark.eventLog.rolling.enabled``, the default in Spark 4): a directory
  ``eventlog_v2_APP_ID[_ATTEMPT]`` holding ``events_N_APP_ID[...]`` files (the one being
  written ends in ``.inprogress``; a new N begins every ``spark.eventLog.rolling.maxFileSize``)
  and an ``appstatus_APP_ID[.inprogress]`` marker that loses its suffix at the end.

A file is read through one open descriptor from where the last poll stopped, so a rename
does not lose the place; a rolling log moves to file N+1 once it exists and N is read to
its end. Only complete lines are parsed; a partial last line waits for its newline. Memory
is bounded: reads are chunked, a line of an event nothing reads is skipped as it streams
past, and a wanted line longer than ``max_line_bytes`` is dropped and counted.
Compressed logs (a codec suffix, ``spark.eventLog.compress=true``) are reported once and not
read.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from wattspan.engines.spark.eventlog import (
    _CODECS,
    _WANTED,
    EventLogParser,
    Listener,
    _rolling_files,
    _strip_uri,
    log_files,
)

__all__ = ["EventLogTailer", "LogFollower", "log_files"]

log = logging.getLogger("wattspan.spark")

_CHUNK = 1 << 20
MAX_LINE_BYTES = 64 << 20


class _Reader:
    """Complete lines of one file, from where the last read stopped."""

    def __init__(self, path: Path, on_line: Callable[[bytes], None], max_line: int) -> None:
        self.path = path
        self.fh = open(path, "rb")  # noqa: SIM115  (kept open across polls, closed in close)
        self.on_line = on_line
        self.max_line = max_line
        self.partial = b""
        self.skipping = False  # inside a line being dropped (unwanted or too long)
        self.long_lines = 0

    def read(self) -> int:
        """Reads what was appended; returns the number of complete lines handed on."""
        n = 0
        while True:
            data = self.fh.read(_CHUNK)
            if not data:
                return n
            n += self._take(data)

    def _take(self, data: bytes) -> int:
        n = 0
        start = 0
        if self.skipping:
            nl = data.find(b"\n")
            if nl < 0:
                return 0
            self.skipping = False
            start = nl + 1
        end = data.rfind(b"\n")
        if end < start:
            self._hold(data[start:])
            return 0
        head = data[start:end]
        lines = head.split(b"\n")
        if self.partial:
            lines[0] = self.partial + lines[0]
            self.partial = b""
        on_line = self.on_line
        for line in lines:
            if line:
                on_line(line)
                n += 1
        self._hold(data[end + 1 :])
        return n

    def _hold(self, rest: bytes) -> None:
        part = self.partial + rest if self.partial else rest
        if len(part) > (1 << 16) and not part.startswith(_WANTED):
            # A line of an event nothing reads (a SQL plan can be megabytes): drop it now.
            self.partial, self.skipping = b"", True
        elif len(part) > self.max_line:
            self.long_lines += 1
            self.partial, self.skipping = b"", True
        else:
            self.partial = part

    def close(self) -> None:
        self.fh.close()


class LogFollower:
    """One application's log (either layout), fed line by line into a parser."""

    def __init__(self, path: Path, parser: EventLogParser, max_line: int = MAX_LINE_BYTES):
        self.path = path
        self.parser = parser
        self.rolling = path.is_dir()
        self.max_line = max_line
        self.reader: _Reader | None = None
        self.index = -1
        self.done = False
        self.lines = 0

    def _final_name(self) -> bool:
        """True once Spark marked the log complete (the ``.inprogress`` suffix is gone)."""
        if self.rolling:
            return any(
                p.name.startswith("appstatus_") and not p.name.endswith(".inprogress")
                for p in self.path.iterdir()
            )
        return not self.path.name.endswith(".inprogress") or not self.path.exists()

    def poll(self, final: bool = False) -> int:
        """Reads what is new; ``final``: the writer is gone, read to the end and close."""
        if self.done:
            return 0
        n = 0
        complete = self._final_name()
        if self.rolling:
            files = _rolling_files(self.path)
            for idx, p in files:
                if idx < self.index:
                    continue
                if idx > self.index:
                    if self.reader is not None:
                        n += self.reader.read()  # the rest of the previous file
                        self.reader.close()
                    self.reader = _Reader(p, self.parser.feed, self.max_line)
                    self.index = idx
                n += self.reader.read()
        else:
            if self.reader is None:
                self.reader = _Reader(self.path, self.parser.feed, self.max_line)
            n += self.reader.read()
        self.lines += n
        if final or complete or self.parser.ended:
            if self.reader is not None:
                self.lines += self.reader.read()
                self.reader.close()
            self.parser.close()
            self.done = True
        return n


class EventLogTailer:
    """Follows every application log that appears in ``directory``.

    ``listener_for(path)`` gives the listener of a new log's parser. ``start()`` polls in a
    daemon thread every ``poll_s``, calling ``after_poll()`` after each poll (the monitor
    sends the spans that waited long enough there); ``finish()`` reads everything left (the
    applications ended, or their driver is gone) and closes what is still open as
    unfinished. Logs that were in the directory before the tailer was made are left alone
    (``existing=False``).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        listener_for: Callable[[Path], Listener],
        *,
        poll_s: float = 0.25,
        existing: bool = False,
        after_poll: Callable[[], object] | None = None,
    ) -> None:
        self.directory = Path(_strip_uri(os.fspath(directory)))
        self.listener_for = listener_for
        self.poll_s = poll_s
        self.after_poll = after_poll
        self.followers: dict[str, LogFollower] = {}
        self._ignore: set[str] = set()
        if not existing and self.directory.is_dir():
            self._ignore = {p.name for p in self.directory.iterdir()}
        self._warned: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.errors = 0

    def _key(self, name: str) -> str | None:
        """The application key of a directory entry, or None when it is not a log."""
        if name.startswith("."):
            return None
        base = name.removesuffix(".inprogress")
        if base.endswith(_CODECS):
            if base not in self._warned:
                self._warned.add(base)
                log.warning(
                    "wattspan: %s is a compressed Spark event log, which wattspan cannot read "
                    "(spark.eventLog.compress=false is needed)",
                    self.directory / name,
                )
            return None
        return base

    def _discover(self) -> None:
        try:
            entries = list(self.directory.iterdir())
        except OSError:
            return
        for p in entries:
            if p.name in self._ignore:
                continue
            key = self._key(p.name)
            if key is None:
                continue
            f = self.followers.get(key)
            if f is None:
                self.followers[key] = LogFollower(p, EventLogParser(self.listener_for(p)))
            elif not f.rolling and f.path != p and p.exists():
                # The ``.inprogress`` file was renamed: the open descriptor reads on, the
                # new name tells that it is complete.
                f.path = p

    def poll_once(self, final: bool = False) -> int:
        with self._lock:
            self._discover()
            n = 0
            for f in list(self.followers.values()):
                try:
                    n += f.poll(final)
                except OSError as exc:
                    self.errors += 1
                    log.warning("wattspan: reading %s: %s", f.path, exc)
                    if final:
                        f.done = True
            return n

    def start(self) -> EventLogTailer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="wattspan-spark", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll_once()
                if self.after_poll is not None:
                    self.after_poll()
            except Exception as exc:  # keep following: one bad poll must not end it
                self.errors += 1
                log.warning(
                    "wattspan: Spark event log poll failed: %s: %s", type(exc).__name__, exc
                )

    def wait_done(self, timeout: float) -> bool:
        """Waits until every followed log is complete (or ``timeout`` s); True if so."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll_once()
            if self.after_poll is not None:
                self.after_poll()
            if self.followers and all(f.done for f in self.followers.values()):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(self.poll_s, 0.05))

    def finish(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None
        self.poll_once(final=True)
