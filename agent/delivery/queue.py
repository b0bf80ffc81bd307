"""A durable FIFO queue on local disk: append-only segment files plus a checkpoint.

Layout of a queue directory::

    lock                         flock(2)ed while open: one process per queue
    00000000000000000007.seg     segments, oldest first; the newest is the one appended to
    00000000000000000008.seg
    checkpoint                   consumer position: (segment id, byte offset), CRC-protected

A segment starts with an 8-byte magic and holds frames::

    <u32 payload length> <u32 item count> <u32 crc32(length, count, payload)> <payload>

Why this shape:

* ``append`` is a single ``write(2)`` to the page cache, so once it returns the data survives
  the death of the process (SIGKILL, OOM kill). Surviving a power loss additionally needs an
  ``fsync``; :class:`FsyncPolicy` chooses between every append, every N ms, or never.
* The consumer reads ahead of the checkpoint and only advances it (``commit``) after the
  receiver confirmed the batch; a crash in between re-sends that batch (at-least-once).
* A crash can leave a half-written frame at the end of the newest segment. The length + CRC
  frame detects it on open and the segment is truncated to the last complete frame.
* The quota (``max_bytes``) is enforced by deleting whole segments, oldest first, so dropping
  is O(1) and never rewrites data. Segments are kept to at most a quarter of the quota so a
  drop removes a bounded slice of history.
* A full disk (``ENOSPC``, ``EDQUOT``) is treated like the quota: the oldest segments go
  first, and when nothing is left to drop the new frames are dropped; all of it is counted in
  ``dropped_items_total``, logged at most once a minute, and writing resumes by itself once
  there is room. An append therefore never fails for lack of space.
* Every file and directory the queue creates is owner-only (0600 / 0700).

The queue is thread-safe for any number of producers and exactly one consumer thread.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import struct
import threading
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wattspan.agent.logthrottle import LogThrottle
from wattspan.agent.private import make_private_dirs, open_private

log = logging.getLogger(__name__)

SEGMENT_MAGIC = b"WSQSEG1\n"
HEADER_SIZE = len(SEGMENT_MAGIC)
FRAME = struct.Struct("<III")
_LEN_COUNT = struct.Struct("<II")
CHECKPOINT = struct.Struct("<8sQQI")
CHECKPOINT_MAGIC = b"WSQCKPT1"
#: A frame length above this is treated as corruption rather than trusted (a torn header can
#: contain any 32-bit number).
MAX_FRAME_PAYLOAD = 256 * 1024 * 1024
MIN_SEGMENT_BYTES = 4096
_SEGMENT_RE = re.compile(r"^(\d{20})\.seg$")
#: Errors that mean "no room": handled like the quota instead of failing the append.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
#: At most one log line per this many seconds for a full disk or a failing checkpoint write.
LOG_EVERY = 60.0


def _no_space(exc: OSError) -> bool:
    return exc.errno in _NO_SPACE


class QueueLockedError(RuntimeError):
    """Another process (or another queue object) already has this queue directory open."""


class QueueClosedError(RuntimeError):
    """The queue was closed; nothing can be appended any more."""


@dataclass(frozen=True, slots=True)
class FsyncPolicy:
    """When appended data is forced to stable storage.

    * ``batch``: ``fsync`` inside every ``append`` call: acknowledged data survives power loss.
    * ``interval``: a background thread ``fsync``\\ s at most every ``interval`` seconds: at most
      that much acknowledged data can be lost on power loss (none on a process crash).
    * ``none``: leave it to the kernel's writeback; survives process crashes only.
    """

    mode: str = "batch"
    interval: float = 0.0

    @classmethod
    def parse(cls, value: object) -> FsyncPolicy:
        """Parse the config form: ``"batch"``, ``"none"``, or a number of milliseconds.

        Raises ``ValueError`` with a message suitable for a config error.
        """
        if isinstance(value, bool):
            raise ValueError('expected "batch", "none" or a number of milliseconds')
        if isinstance(value, int | float):
            if value != value or value < 0:
                raise ValueError("milliseconds must be >= 0")
            if value == 0:
                return cls("batch")
            return cls("interval", float(value) / 1000.0)
        if isinstance(value, str):
            v = value.strip().lower()
            if v in ("batch", "always"):
                return cls("batch")
            if v in ("none", "never", "off"):
                return cls("none")
            if v.endswith("ms"):
                v = v[:-2].strip()
            try:
                return cls.parse(float(v))
            except ValueError:
                pass
        raise ValueError(f'expected "batch", "none" or a number of milliseconds, got {value!r}')

    def __str__(self) -> str:
        if self.mode == "interval":
            return f"{self.interval * 1000:g}ms"
        return self.mode


@dataclass(slots=True, eq=False)
class QueueBatch:
    """Frames handed to the consumer; they stay on disk until :meth:`DiskQueue.commit`.

    A batch never spans two segments. ``count`` is the sum of the frames' item counts.
    """

    segment: int
    start: int
    end: int
    payloads: list[bytes] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    count: int = 0
    nbytes: int = 0


class _Segment:
    __slots__ = ("consumed_items", "id", "items", "path", "read_items", "size")

    def __init__(self, seg_id: int, path: Path, size: int, items: int) -> None:
        self.id = seg_id
        self.path = path
        self.size = size  # bytes, header included, only complete frames
        self.items = items  # sum of frame counts
        self.read_items = 0  # items handed to the consumer (>= consumed_items)
        self.consumed_items = 0  # items before the checkpoint


def _frame_crc(length: int, count: int, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(_LEN_COUNT.pack(length, count)))


def encode_frame(payload: bytes, count: int) -> bytes:
    """The on-disk bytes of one frame (exposed for tests that forge torn tails)."""
    n = len(payload)
    return FRAME.pack(n, count, _frame_crc(n, count, payload)) + payload


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DiskQueue:
    """Durable FIFO of opaque payloads, each carrying an item count (e.g. records in it).

    ``max_bytes`` bounds the disk usage of the segments (bytes); past it the oldest segments
    are deleted and their undelivered items counted in ``dropped_items_total`` and reported to
    ``on_drop(items, bytes)`` (called in the appending thread, outside the lock). A full disk
    drops the same way, counted in ``dropped_items_total`` and
    ``disk_full_dropped_items_total`` but not reported to ``on_drop`` (whose callers speak of
    the quota): the queue logs those itself.
    ``segment_bytes`` is the target size of one segment file (bytes), capped at a quarter of
    ``max_bytes``. Up to ``memory_cache_bytes`` of the newest payloads are also kept in memory
    (a read-back cache only; the files stay authoritative).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int = 256 * 1024 * 1024,
        segment_bytes: int = 8 * 1024 * 1024,
        fsync: FsyncPolicy | None = None,
        on_drop: Callable[[int, int], None] | None = None,
        name: str | None = None,
        memory_cache_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.directory = Path(directory)
        self.name = name or str(self.directory)
        self.fsync_policy = fsync or FsyncPolicy()
        if max_bytes < 4 * MIN_SEGMENT_BYTES:
            raise ValueError(f"max_bytes must be >= {4 * MIN_SEGMENT_BYTES}")
        self.max_bytes = int(max_bytes)
        self.segment_bytes = max(MIN_SEGMENT_BYTES, min(int(segment_bytes), self.max_bytes // 4))
        self._on_drop = on_drop

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._ckpt_lock = threading.Lock()
        self._ckpt_fd = -1  # the checkpoint file, opened on first write, overwritten in place
        self._ckpt_closed = False  # set by close(): no checkpoint writes after it
        self._segments: list[_Segment] = []
        self._wfd = -1  # fd of the newest (active) segment, O_APPEND
        self._rfd = -1  # consumer-owned read fd and the segment it belongs to
        self._rfd_seg = -1
        self._read_seg = 0
        self._read_off = HEADER_SIZE
        self._ckpt_seg = 0
        self._ckpt_off = HEADER_SIZE
        self._outstanding: QueueBatch | None = None
        self._orphaned_items = 0  # items of the outstanding batch whose segment was dropped
        self._disk_bytes = 0
        self._queued_items = 0  # neither committed nor dropped (in-flight batch included)
        self._unread_items = 0  # not yet handed to the consumer
        self._dropped_items_total = 0
        self._dropped_bytes_total = 0
        self._appended_items_total = 0
        self._fsyncs_total = 0
        self._corrupt_bytes_total = 0
        self._disk_full_dropped_items_total = 0  # included in _dropped_items_total
        self._write_errors_total = 0
        self._no_room = False  # the current append met a full disk
        self._disk_full = False  # the last append met a full disk
        self._disk_full_episode_items = 0  # dropped for lack of space since it became full
        self._disk_full_said = 0  # of those, already passed to the log throttle
        self._disk_full_log = LogThrottle(LOG_EVERY)
        self._disk_full_logged = False  # this episode was announced: announce its end too
        self._ckpt_log = LogThrottle(LOG_EVERY)
        # The newest appended payloads, kept in memory so that a consumer keeping up with the
        # producers never reads them back from disk: (segment, start, end, payload, count).
        self._cache: deque[tuple[int, int, int, bytes, int]] = deque()
        self._cache_bytes = 0
        self.memory_cache_bytes = max(0, int(memory_cache_bytes))
        self._dirty = False
        self._dir_dirty = False
        self._wake = False
        self._closed = False

        make_private_dirs(self.directory)
        self._lockfile = os.fdopen(open_private(self.directory / "lock", os.O_RDWR), "r+b")
        try:
            fcntl.flock(self._lockfile.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lockfile.close()
            raise QueueLockedError(f"queue directory {self.directory} is in use") from None
        try:
            self._recover()
        except BaseException:
            self._lockfile.close()
            raise

        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        if self.fsync_policy.mode == "interval":
            self._syncer = threading.Thread(
                target=self._sync_loop, name=f"wattspan-queue-fsync[{self.name}]", daemon=True
            )
            self._syncer.start()

    # ------------------------------------------------------------------ recovery

    def _seg_path(self, seg_id: int) -> Path:
        return self.directory / f"{seg_id:020d}.seg"

    def _read_checkpoint(self) -> tuple[int, int] | None:
        path = self.directory / "checkpoint"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if len(data) == CHECKPOINT.size:
            magic, seg, off, crc = CHECKPOINT.unpack(data)
            if magic == CHECKPOINT_MAGIC and zlib.crc32(data[:-4]) == crc:
                return seg, off
        # A corrupt checkpoint only costs re-sending what is still on disk, never data.
        log.warning(
            "queue %s: checkpoint file is corrupt, starting from the oldest data", self.name
        )
        return None

    def _scan_segment(self, path: Path, ckpt_off: int | None) -> tuple[int, int, int, int | None]:
        """Validate a segment; return (valid size, items, items before ckpt, ckpt offset).

        The returned checkpoint offset is snapped to a frame boundary (None if not given).
        """
        data = path.read_bytes()
        if len(data) < HEADER_SIZE or data[:HEADER_SIZE] != SEGMENT_MAGIC:
            return 0, 0, 0, None if ckpt_off is None else HEADER_SIZE
        pos = HEADER_SIZE
        items = 0
        before = 0
        snapped: int | None = None
        n = len(data)
        mv = memoryview(data)
        while pos + FRAME.size <= n:
            if ckpt_off is not None and snapped is None and pos >= ckpt_off:
                snapped = pos
                before = items
            length, count, crc = FRAME.unpack_from(data, pos)
            end = pos + FRAME.size + length
            if length > MAX_FRAME_PAYLOAD or end > n:
                break
            if _frame_crc(length, count, mv[pos + FRAME.size : end]) != crc:
                break
            items += count
            pos = end
        if ckpt_off is not None and snapped is None:
            snapped = pos
            before = items
        return pos, items, before, snapped

    def _recover(self) -> None:
        for tmp in self.directory.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        ids = sorted(
            int(m.group(1))
            for p in self.directory.iterdir()
            if (m := _SEGMENT_RE.match(p.name)) is not None
        )
        ckpt = self._read_checkpoint()
        ckpt_seg, ckpt_off = ckpt if ckpt is not None else (0, HEADER_SIZE)
        for seg_id in [i for i in ids if i < ckpt_seg]:
            # Fully consumed before the last stop; deleting them was interrupted.
            self._seg_path(seg_id).unlink(missing_ok=True)
        ids = [i for i in ids if i >= ckpt_seg]
        if not ids or ids[0] != ckpt_seg:
            # The checkpoint's segment is gone (dropped or consumed): start at the next one.
            ckpt_off = HEADER_SIZE
            ckpt_seg = ids[0] if ids else ckpt_seg + 1

        for seg_id in ids:
            path = self._seg_path(seg_id)
            file_size = path.stat().st_size
            off = ckpt_off if seg_id == ckpt_seg else None
            size, items, before, snapped = self._scan_segment(path, off)
            if size == 0:
                # Missing magic: a segment whose creation was torn. Nothing in it is valid.
                if file_size:
                    log.warning("queue %s: %s has no valid header, discarding it", self.name, path)
                    self._corrupt_bytes_total += file_size
                with open(path, "wb") as f:
                    f.write(SEGMENT_MAGIC)
                size = HEADER_SIZE
            elif size < file_size:
                log.warning(
                    "queue %s: %s ends with %d bytes of an incomplete or corrupt frame "
                    "(interrupted write); truncating to the last complete frame",
                    self.name,
                    path.name,
                    file_size - size,
                )
                self._corrupt_bytes_total += file_size - size
                with open(path, "r+b") as f:
                    f.truncate(size)
                    f.flush()
                    os.fsync(f.fileno())
            seg = _Segment(seg_id, path, size, items)
            if seg_id == ckpt_seg:
                ckpt_off = snapped if snapped is not None else HEADER_SIZE
                seg.consumed_items = seg.read_items = before
            self._segments.append(seg)
            self._disk_bytes += size

        if not self._segments:
            self._segments.append(self._create_segment(ckpt_seg))
        self._ckpt_seg, self._ckpt_off = ckpt_seg, ckpt_off
        self._read_seg, self._read_off = ckpt_seg, ckpt_off
        self._queued_items = sum(s.items - s.consumed_items for s in self._segments)
        self._unread_items = self._queued_items
        active = self._segments[-1]
        self._wfd = os.open(active.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        if self._queued_items:
            log.info(
                "queue %s: resuming with %d queued items (%d bytes on disk)",
                self.name,
                self._queued_items,
                self._disk_bytes,
            )

    def _create_segment(self, seg_id: int) -> _Segment:
        path = self._seg_path(seg_id)
        fd = open_private(path, os.O_WRONLY | os.O_EXCL)
        try:
            os.write(fd, SEGMENT_MAGIC)
        except BaseException:
            # Typically ENOSPC. Left behind, the empty file would make every later O_EXCL
            # creation of this id fail, so the queue could never rotate again.
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        finally:
            os.close(fd)
        self._disk_bytes += HEADER_SIZE
        self._dir_dirty = True
        return _Segment(seg_id, path, HEADER_SIZE, 0)

    # ------------------------------------------------------------------ producer side

    def append(self, payload: bytes, count: int = 1) -> None:
        """Append one payload holding ``count`` items. Durable (per policy) on return."""
        self.append_many(((payload, count),))

    def append_many(self, frames: Sequence[tuple[bytes, int]]) -> None:
        """Append several payloads with one write (and one fsync) per touched segment.

        On return every frame is queued or counted in ``dropped_items_total`` (quota, full
        disk). A call that raises has queued none of its frames, so a caller that counts it as
        failed never counts records that will be delivered. Raises :class:`QueueClosedError`
        after :meth:`close`, and ``OSError`` for an I/O error other than a full disk (and for
        a failed fsync under the ``batch`` policy: the frames are queued but not durable).
        """
        if not frames:
            return
        encoded = [(encode_frame(p, c), p, c) for p, c in frames]
        drops: list[tuple[int, int]] = []
        notice: tuple[str, tuple[object, ...]] | None = None
        try:
            with self._lock:
                if self._closed:
                    raise QueueClosedError(f"queue {self.name} is closed")
                self._no_room = False
                appended_before = self._appended_items_total
                handled = 0  # items of this call queued or counted as dropped
                pending: list[tuple[bytes, bytes, int]] = []
                pending_bytes = 0
                pending_items = 0
                try:
                    for frame, payload, count in encoded:
                        n = len(frame)
                        if n + HEADER_SIZE > self.max_bytes:
                            # Can never fit: count it like a quota drop, don't fail the caller.
                            self._dropped_items_total += count
                            self._dropped_bytes_total += n
                            drops.append((count, n))
                            handled += count
                            continue
                        active = self._segments[-1]
                        if (
                            active.size + pending_bytes + n > self.segment_bytes
                            and active.size + pending_bytes > HEADER_SIZE
                        ):
                            self._write_or_drop(pending, pending_bytes, pending_items)
                            handled += pending_items
                            pending, pending_bytes, pending_items = [], 0, 0
                            self._rotate_or_stay()
                        over = self._disk_bytes + pending_bytes + n - self.max_bytes
                        if over > 0:
                            self._write_or_drop(pending, pending_bytes, pending_items)
                            handled += pending_items
                            pending, pending_bytes, pending_items = [], 0, 0
                            drops.extend(self._make_room(n))
                        pending.append((frame, payload, count))
                        pending_bytes += n
                        pending_items += count
                    self._write_or_drop(pending, pending_bytes, pending_items)
                    handled += pending_items
                except OSError as exc:
                    if self._appended_items_total == appended_before:
                        raise  # nothing of this call is queued: failing it is exact
                    # Frames before a rotation are queued already; raising would make the
                    # caller count them as lost (and re-send them). Count the rest instead.
                    lost = sum(c for _, _, c in encoded) - handled
                    self._dropped_items_total += lost
                    self._write_errors_total += 1
                    notice = (
                        "queue %s: write failed after part of an append was queued (%s); "
                        "%d items of it dropped (counted in dropped_items_total)",
                        (self.name, exc, lost),
                    )
                if self.fsync_policy.mode == "batch" and self._dirty:
                    self._fsync_locked()
                notice = self._disk_full_notice() or notice
                self._cond.notify_all()
        finally:
            if notice is not None:
                log.warning(notice[0], *notice[1])
            if drops and self._on_drop is not None:
                for items, nbytes in drops:
                    self._on_drop(items, nbytes)

    def _write_or_drop(
        self, frames: list[tuple[bytes, bytes, int]], nbytes: int, items: int
    ) -> None:
        """:meth:`_write`; on a full disk the oldest queued data makes room, and when there is
        none left the frames themselves are dropped (lock held)."""
        while frames:
            try:
                self._write(frames, nbytes, items)
                return
            except OSError as exc:
                if not _no_space(exc):
                    raise
                self._no_room = True
                if not self._drop_oldest_for_space():
                    self._dropped_items_total += items
                    self._dropped_bytes_total += nbytes
                    self._disk_full_dropped_items_total += items
                    self._disk_full_episode_items += items
                    return

    def _rotate_or_stay(self) -> None:
        """:meth:`_rotate`; on a full disk make room first, or keep appending to the active
        segment when nothing can be dropped (lock held)."""
        while True:
            try:
                self._rotate()
                return
            except OSError as exc:
                if not _no_space(exc):
                    raise
                self._no_room = True
                if not self._drop_oldest_for_space() or self._segments[-1].size <= HEADER_SIZE:
                    return  # nothing to drop, or the active segment was emptied in place

    def _drop_oldest_for_space(self) -> bool:
        """Drop the oldest segment to free disk space; False when nothing is left to drop
        (lock held)."""
        before = self._dropped_items_total
        if len(self._segments) > 1:
            self._drop_head()
        elif self._segments[0].size > HEADER_SIZE:
            # Even when everything in it was delivered: it is the only thing left to free.
            self._reset_active()
        else:
            return False
        self._disk_full_dropped_items_total += self._dropped_items_total - before
        self._disk_full_episode_items += self._dropped_items_total - before
        return True

    def _disk_full_notice(self) -> tuple[str, tuple[object, ...]] | None:
        """The log line this append owes about a full disk, if any (lock held): at most one a
        minute while appends find no room, and one when they find room again."""
        if self._no_room:
            self._disk_full = True
            new = self._disk_full_episode_items - self._disk_full_said
            self._disk_full_said = self._disk_full_episode_items
            # Only losses are news: freeing delivered data must not start the throttle's
            # interval and so hide the first real loss.
            n = self._disk_full_log.hit(new) if new else 0
            if n:
                self._disk_full_logged = True
                return (
                    "queue %s: no space left on device; dropped the oldest %d queued items "
                    "to make room (counted in dropped_items_total; logged at most once a "
                    "minute)",
                    (self.name, n),
                )
            return None
        if not self._disk_full:
            return None
        self._disk_full = False
        lost, logged = self._disk_full_episode_items, self._disk_full_logged
        self._disk_full_episode_items = self._disk_full_said = 0
        self._disk_full_logged = False
        if not logged:
            return None
        return (
            "queue %s: writing again, the disk has room; %d items were dropped while it was full",
            (self.name, lost),
        )

    def _write(self, frames: list[tuple[bytes, bytes, int]], nbytes: int, items: int) -> None:
        if not frames:
            return
        data = frames[0][0] if len(frames) == 1 else b"".join(f[0] for f in frames)
        active = self._segments[-1]
        view = memoryview(data)
        written = 0
        try:
            while written < nbytes:
                written += os.write(self._wfd, view[written:])
        except BaseException:
            # Never leave a partial frame in the middle of the segment (ENOSPC, EINTR...):
            # the next append would otherwise follow garbage.
            with contextlib.suppress(OSError):
                os.ftruncate(self._wfd, active.size)
            raise
        if self.memory_cache_bytes:
            off = active.size
            for frame, payload, count in frames:
                self._cache.append((active.id, off, off + len(frame), payload, count))
                self._cache_bytes += len(payload)
                off += len(frame)
            while self._cache_bytes > self.memory_cache_bytes:
                self._cache_bytes -= len(self._cache.popleft()[3])
        active.size += nbytes
        active.items += items
        self._disk_bytes += nbytes
        self._queued_items += items
        self._unread_items += items
        self._appended_items_total += items
        self._dirty = True

    def _rotate(self) -> None:
        """Seal the active segment and start a new one (lock held)."""
        if self.fsync_policy.mode != "none" and self._dirty:
            self._fsync_locked()
        old = self._segments[-1]
        new = self._create_segment(old.id + 1)
        os.close(self._wfd)
        self._wfd = os.open(new.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._segments.append(new)
        if self.fsync_policy.mode == "batch":
            _fsync_dir(self.directory)
            self._dir_dirty = False

    def _make_room(self, needed: int) -> list[tuple[int, int]]:
        """Delete oldest segments until ``needed`` more bytes fit (lock held)."""
        drops: list[tuple[int, int]] = []
        while self._disk_bytes + needed > self.max_bytes:
            if len(self._segments) > 1:
                drops.append(self._drop_head())
            elif self._segments[0].size > HEADER_SIZE:
                drops.append(self._reset_active())
            else:
                break
        return drops

    def _reset_active(self) -> tuple[int, int]:
        """Drop the only segment, the active one, in place (lock held).

        It is renamed to the next id and truncated to its header, which needs no free space:
        rotating first would need a block for the new file, which a full disk does not have.
        A crash between rename and truncation leaves the old frames under the new id, read
        again after the restart (at-least-once); they never mix with later appends, which
        follow the truncation.
        """
        old = self._segments[0]
        new = _Segment(old.id + 1, self._seg_path(old.id + 1), HEADER_SIZE, 0)
        os.rename(old.path, new.path)
        os.ftruncate(self._wfd, HEADER_SIZE)
        self._segments.append(new)
        self._disk_bytes += HEADER_SIZE
        self._dirty = self._dir_dirty = True
        return self._drop_head()  # its unlink of the old name finds nothing; that is fine

    def _drop_head(self) -> tuple[int, int]:
        seg = self._segments.pop(0)
        while self._cache and self._cache[0][0] == seg.id:
            self._cache_bytes -= len(self._cache.popleft()[3])
        nxt = self._segments[0]
        unread = seg.items - seg.read_items
        inflight = seg.read_items - seg.consumed_items
        # In-flight items stay counted as queued until the consumer commits or abandons them.
        self._queued_items -= unread
        self._unread_items -= unread
        self._dropped_items_total += unread
        self._disk_bytes -= seg.size
        undelivered_bytes = seg.size - (self._ckpt_off if self._ckpt_seg == seg.id else HEADER_SIZE)
        self._dropped_bytes_total += max(0, undelivered_bytes)
        if inflight:
            # The consumer holds a batch from this segment. Whether those items end up
            # delivered or dropped is decided when it commits or abandons the batch.
            self._orphaned_items = inflight
        if self._read_seg == seg.id:
            self._read_seg, self._read_off = nxt.id, HEADER_SIZE
        if self._ckpt_seg == seg.id:
            self._ckpt_seg, self._ckpt_off = nxt.id, HEADER_SIZE
        # The consumer may still be reading it through its own fd; unlink is safe for that.
        seg.path.unlink(missing_ok=True)
        return unread, max(0, undelivered_bytes)

    # ------------------------------------------------------------------ fsync

    def _fsync_locked(self) -> None:
        os.fsync(self._wfd)
        if self._dir_dirty:
            _fsync_dir(self.directory)
            self._dir_dirty = False
        self._dirty = False
        self._fsyncs_total += 1

    def sync(self) -> None:
        """Force appended data to stable storage now (any policy)."""
        with self._lock:
            if self._closed or not (self._dirty or self._dir_dirty):
                return
            fd = os.dup(self._wfd)
            dir_dirty = self._dir_dirty
            self._dirty = self._dir_dirty = False
        # fsync outside the lock so producers are not blocked for the duration of the flush.
        try:
            os.fsync(fd)
            if dir_dirty:
                _fsync_dir(self.directory)
        finally:
            os.close(fd)
        with self._lock:
            self._fsyncs_total += 1

    def _sync_loop(self) -> None:
        interval = self.fsync_policy.interval
        while not self._stop.wait(interval):
            try:
                self.sync()
            except OSError:
                log.exception("queue %s: fsync failed", self.name)

    # ------------------------------------------------------------------ consumer side

    def _segment(self, seg_id: int) -> _Segment | None:
        for seg in self._segments:
            if seg.id == seg_id:
                return seg
        return None

    def _collect_consumed(self) -> list[Path]:
        """Advance past fully consumed sealed segments (lock held); return files to delete."""
        paths: list[Path] = []
        while len(self._segments) > 1:
            head = self._segments[0]
            if head.id != self._ckpt_seg or self._ckpt_off < head.size:
                break
            self._segments.pop(0)
            self._disk_bytes -= head.size
            nxt = self._segments[0]
            self._ckpt_seg, self._ckpt_off = nxt.id, HEADER_SIZE
            if self._read_seg == head.id:
                self._read_seg, self._read_off = nxt.id, HEADER_SIZE
            paths.append(head.path)
        return paths

    def _persist(self, ckpt: tuple[int, int], paths: list[Path]) -> None:
        """Write the checkpoint, then delete consumed segments (in that order: a crash in
        between leaves segments older than the checkpoint, which recovery deletes).

        The checkpoint is not fsynced here, in any policy: a process crash cannot lose it
        (page cache), and a power loss can only roll it back, which re-sends records that were
        delivered already -- never loses any. Receivers such as InfluxDB overwrite an
        identical point, so the re-send does not even change counts. :meth:`close` syncs it.
        An fsync per delivered batch cost about 10 % of delivery throughput.
        """
        with self._ckpt_lock:
            seg, off = ckpt
            head = CHECKPOINT.pack(CHECKPOINT_MAGIC, seg, off, 0)[:-4]
            data = head + struct.pack("<I", zlib.crc32(head))
            if self._ckpt_closed:
                # close() has synced the checkpoint and may have released the directory lock:
                # writing now could overwrite the next owner's. Not writing costs a re-send.
                return
            try:
                if self._ckpt_fd < 0:
                    self._ckpt_fd = open_private(self.directory / "checkpoint", os.O_RDWR)
                    os.ftruncate(self._ckpt_fd, len(data))
                    with self._lock:
                        self._dir_dirty = True  # the file may be new
                # Overwritten in place: one syscall per delivered batch instead of a temporary
                # file and a rename (four), which matters because every syscall of the
                # delivery thread is a point where a busy producer thread can take the GIL. A
                # pwrite of 28 bytes cannot be torn by a process crash; after a power loss a
                # torn sector fails the CRC, which means re-sending, never losing.
                os.pwrite(self._ckpt_fd, data, 0)
            except OSError as exc:
                # A full disk can refuse even these 28 bytes (a new file's first block). An
                # old checkpoint only re-sends delivered records after a restart, and the
                # consumed segments below may be what gives the disk room again, so they are
                # deleted all the same: recovery starts at the oldest segment that is left.
                with self._lock:
                    self._write_errors_total += 1
                    n = self._ckpt_log.hit()
                if n:
                    log.warning(
                        "queue %s: cannot write the checkpoint (%s); delivered records may be "
                        "sent again after a restart (%d failed writes; logged once a minute)",
                        self.name,
                        exc,
                        n,
                    )
            for p in paths:
                p.unlink(missing_ok=True)
            if paths:
                with self._lock:
                    self._dir_dirty = True

    def _close_checkpoint(self, sync: bool) -> None:
        with self._ckpt_lock:
            self._ckpt_closed = True
            if self._ckpt_fd < 0:
                return
            try:
                if sync:
                    os.fsync(self._ckpt_fd)
            finally:
                os.close(self._ckpt_fd)
                self._ckpt_fd = -1

    def read(self, max_items: int, max_bytes: int) -> QueueBatch | None:
        """Hand out the next frames (at least one if any) without consuming them.

        Stops before exceeding ``max_items`` items or ``max_bytes`` payload bytes. Returns
        ``None`` when nothing is unread. Only one batch may be outstanding: call
        :meth:`commit` or :meth:`abandon` before reading again.
        """
        while True:
            paths: list[Path] = []
            target: tuple[int, _Segment, int, int, int] | None = None
            with self._lock:
                if self._outstanding is not None:
                    raise RuntimeError("previous batch was neither committed nor abandoned")
                if self._closed:
                    raise QueueClosedError(f"queue {self.name} is closed")
                seg = self._segment(self._read_seg)
                if seg is None:  # cannot happen: drops and deletions move the read position
                    seg = self._segments[0]
                    self._read_seg, self._read_off = seg.id, HEADER_SIZE
                if self._read_off >= seg.size:
                    if seg is self._segments[-1]:
                        return None
                    # End of a sealed segment. No batch is outstanding, so the checkpoint is
                    # here too: the segment is fully consumed and can go.
                    nxt = self._segments[self._segments.index(seg) + 1]
                    self._read_seg, self._read_off = nxt.id, HEADER_SIZE
                    paths = self._collect_consumed()
                    ckpt = (self._ckpt_seg, self._ckpt_off)
                else:
                    batch = self._read_cached(seg, max_items, max_bytes)
                    if batch is not None:
                        return batch
                    if self._rfd_seg != seg.id:
                        # Opened under the lock: the quota may unlink the file at any time.
                        if self._rfd >= 0:
                            os.close(self._rfd)
                        self._rfd = os.open(seg.path, os.O_RDONLY | os.O_CLOEXEC)
                        self._rfd_seg = seg.id
                    target = (self._rfd, seg, self._read_off, seg.size, seg.items)
            if target is None:
                if paths:
                    self._persist(ckpt, paths)
                continue
            # Read outside the lock so producers are never blocked by the consumer's I/O.
            fd, seg, start, avail, items_at = target
            batch, bad = self._parse(fd, seg.id, start, avail, max_items, max_bytes)
            with self._lock:
                if self._segment(seg.id) is None or self._read_seg != seg.id:
                    # Dropped by the quota while we were reading: its items were counted as
                    # dropped already. Read again from the new head.
                    continue
                if batch is not None:
                    seg.read_items += batch.count
                    self._unread_items -= batch.count
                    self._read_off = batch.end
                    self._outstanding = batch
                    return batch
                if not bad:
                    return None
                # Corruption at the read position (no batch outstanding): skip to the end of
                # what was written when we looked, and count what was lost.
                lost = items_at - seg.read_items
                log.error(
                    "queue %s: corrupt frame in %s at offset %d; skipping %d bytes (%d items lost)",
                    self.name,
                    seg.path.name,
                    start,
                    avail - start,
                    lost,
                )
                self._corrupt_bytes_total += avail - start
                self._dropped_items_total += lost
                self._queued_items -= lost
                self._unread_items -= lost
                seg.read_items = seg.consumed_items = items_at
                self._read_off = self._ckpt_off = avail
                ckpt = (self._ckpt_seg, self._ckpt_off)
            self._persist(ckpt, [])

    def _read_cached(self, seg: _Segment, max_items: int, max_bytes: int) -> QueueBatch | None:
        """Serve the read position from the memory cache if it is there (lock held)."""
        cache = self._cache
        pos = (self._read_seg, self._read_off)
        while cache and cache[0][:2] < pos:  # consumed already (or rewound past)
            self._cache_bytes -= len(cache.popleft()[3])
        if not cache or cache[0][:2] != pos:
            return None
        batch = QueueBatch(seg.id, self._read_off, self._read_off)
        while cache and cache[0][0] == seg.id:
            _, _, end, payload, count = cache[0]
            if batch.payloads and (
                batch.count + count > max_items or batch.nbytes + len(payload) > max_bytes
            ):
                break
            cache.popleft()
            self._cache_bytes -= len(payload)
            batch.payloads.append(payload)
            batch.counts.append(count)
            batch.count += count
            batch.nbytes += len(payload)
            batch.end = end
            if batch.count >= max_items or batch.nbytes >= max_bytes:
                break
        seg.read_items += batch.count
        self._unread_items -= batch.count
        self._read_off = batch.end
        self._outstanding = batch
        return batch

    def _parse(
        self, fd: int, seg_id: int, start: int, avail: int, max_items: int, max_bytes: int
    ) -> tuple[QueueBatch | None, bool]:
        """Read frames at ``start``; return (batch or None, corruption seen at start)."""
        want = min(avail - start, max(max_bytes, 65536) + FRAME.size)
        buf = os.pread(fd, want, start)
        batch = QueueBatch(seg_id, start, start)
        pos = 0
        while pos + FRAME.size <= len(buf):
            length, count, crc = FRAME.unpack_from(buf, pos)
            end = pos + FRAME.size + length
            if length > MAX_FRAME_PAYLOAD or start + end > avail:
                return (batch if batch.payloads else None), not batch.payloads
            if end > len(buf):
                if batch.payloads:
                    break
                buf = os.pread(fd, FRAME.size + length, start)
                if len(buf) < FRAME.size + length:
                    return None, True
            if batch.payloads and (
                batch.count + count > max_items or batch.nbytes + length > max_bytes
            ):
                break
            payload = buf[pos + FRAME.size : end]
            if _frame_crc(length, count, payload) != crc:
                return (batch if batch.payloads else None), not batch.payloads
            batch.payloads.append(payload)
            batch.counts.append(count)
            batch.count += count
            batch.nbytes += length
            pos = end
            batch.end = start + pos
            if batch.count >= max_items or batch.nbytes >= max_bytes:
                break
        if not batch.payloads:
            return None, start < avail
        return batch, False

    def is_stale(self, batch: QueueBatch) -> bool:
        """True when the quota dropped ``batch``'s segment while the consumer held it."""
        with self._lock:
            return self._outstanding is batch and self._orphaned_items > 0

    def commit(self, batch: QueueBatch) -> None:
        """Mark ``batch`` consumed (delivered or dead-lettered) and advance the checkpoint."""
        with self._lock:
            if self._outstanding is not batch:
                raise RuntimeError("commit of a batch that is not outstanding")
            self._outstanding = None
            if self._orphaned_items:
                # Its segment was dropped meanwhile; it was delivered after all, so it is not
                # counted as dropped. The checkpoint has already moved past it.
                self._queued_items -= self._orphaned_items
                self._orphaned_items = 0
                self._cond.notify_all()
                return
            seg = self._segment(batch.segment)
            if seg is None or self._closed:
                return
            seg.consumed_items += batch.count
            self._queued_items -= batch.count
            self._ckpt_seg, self._ckpt_off = seg.id, batch.end
            paths = self._collect_consumed()
            ckpt = (self._ckpt_seg, self._ckpt_off)
            self._cond.notify_all()
        self._persist(ckpt, paths)

    def abandon(self, batch: QueueBatch, undelivered: int | None = None) -> None:
        """Give ``batch`` back without consuming it.

        If its segment was dropped meanwhile, ``undelivered`` items (default: all of the
        batch) are counted as dropped. Otherwise the read position rewinds so that the same
        frames are read again (and, after a restart, re-sent).
        """
        with self._lock:
            if self._outstanding is not batch:
                raise RuntimeError("abandon of a batch that is not outstanding")
            self._outstanding = None
            if self._orphaned_items:
                n = batch.count if undelivered is None else undelivered
                self._dropped_items_total += n
                self._queued_items -= self._orphaned_items
                self._orphaned_items = 0
                return
            seg = self._segment(batch.segment)
            if seg is not None:
                seg.read_items -= batch.count
                self._unread_items += batch.count
                self._read_seg, self._read_off = batch.segment, batch.start

    def wait(self, min_items: int, timeout: float | None) -> int:
        """Block until at least ``min_items`` items are unread, :meth:`wakeup`, close, or
        ``timeout`` seconds; return the number of unread items."""
        with self._cond:
            if self._unread_items < min_items and not self._wake and not self._closed:
                self._cond.wait_for(
                    lambda: self._unread_items >= min_items or self._wake or self._closed,
                    timeout,
                )
            self._wake = False
            return self._unread_items

    def wakeup(self) -> None:
        """Make the current (or next) :meth:`wait` return immediately."""
        with self._cond:
            self._wake = True
            self._cond.notify_all()

    # ------------------------------------------------------------------ introspection

    @property
    def queued_items(self) -> int:
        """Items appended and neither committed nor dropped (in-flight included)."""
        return self._queued_items

    @property
    def unread_items(self) -> int:
        """Items not yet handed to the consumer."""
        return self._unread_items

    @property
    def disk_bytes(self) -> int:
        """Bytes of segment files on disk (what ``max_bytes`` bounds)."""
        return self._disk_bytes

    def stats(self) -> dict[str, int]:
        """Counters (``*_total``) and gauges of the queue."""
        with self._lock:
            return {
                "queued_items": self._queued_items,
                "unread_items": self._unread_items,
                "disk_bytes": self._disk_bytes,
                "segments": len(self._segments),
                "appended_items_total": self._appended_items_total,
                "dropped_items_total": self._dropped_items_total,
                "dropped_bytes_total": self._dropped_bytes_total,
                "corrupt_bytes_total": self._corrupt_bytes_total,
                "disk_full_dropped_items_total": self._disk_full_dropped_items_total,
                "write_errors_total": self._write_errors_total,
                "fsyncs_total": self._fsyncs_total,
            }

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Sync (unless the policy is ``none``), close files and release the directory lock.

        Undelivered data stays on disk and is delivered by the next queue opened there.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join()
        self._close_checkpoint(sync=self.fsync_policy.mode != "none")
        with self._lock:
            try:
                if self.fsync_policy.mode != "none" and (self._dirty or self._dir_dirty):
                    self._fsync_locked()
            finally:
                os.close(self._wfd)
                self._wfd = -1
                if self._rfd >= 0:
                    os.close(self._rfd)
                    self._rfd = -1
                self._lockfile.close()

    def __enter__(self) -> DiskQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"DiskQueue({str(self.directory)!r}, max_bytes={self.max_bytes}, "
            f"fsync={self.fsync_policy})"
        )
