"""A full disk under the exporter queue, on a real (small tmpfs) filesystem.

What is checked is the accounting the exporter reports: every item offered to ``append`` is
delivered, counted in ``dropped_items_total`` or still queued, and the queue writes again by
itself once the disk has room.
"""

from __future__ import annotations

import errno
import logging
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tmpfs import fill, free_bytes, mounted_tmpfs
from wattspan.agent.delivery import DiskQueue, FsyncPolicy

SEGMENT = 64 * 1024
PAYLOAD = 1000


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "mnt", "1m") as mnt:
        yield mnt


def payload(i: int) -> bytes:
    return f"{i:08d}".encode().ljust(PAYLOAD, b".")


def ids(payloads: list[bytes]) -> list[int]:
    return [int(p[:8]) for p in payloads]


def drain(q: DiskQueue) -> list[bytes]:
    out: list[bytes] = []
    while (b := q.read(1000, 1 << 20)) is not None:
        out.extend(b.payloads)
        q.commit(b)
    return out


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_full_disk_drops_oldest_counts_and_recovers(
    tmpfs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wattspan.agent.delivery.queue")
    qdir = tmpfs / "queue"
    # A quota far above the filesystem: only the disk can run out.
    q = DiskQueue(qdir, max_bytes=64 << 20, segment_bytes=SEGMENT, fsync=FsyncPolicy("none"))
    offered = 0
    delivered: list[bytes] = []

    def offer(n: int) -> None:
        nonlocal offered
        for _ in range(n):
            q.append(payload(offered), 1)  # never raises for lack of space
            offered += 1

    def balanced() -> bool:
        st = q.stats()
        return offered == len(delivered) + st["dropped_items_total"] + q.queued_items

    # 1. Nobody delivers: the queue itself fills the 1 MiB filesystem, three times over.
    offer(3000)
    st = q.stats()
    assert st["dropped_items_total"] > 0
    assert st["disk_full_dropped_items_total"] == st["dropped_items_total"]
    assert balanced()
    assert len(messages(caplog, "no space left on device")) == 1  # not one per append

    # What is left is the newest data, in order: the oldest went first.
    delivered += drain(q)
    assert ids(delivered) == list(range(offered - len(delivered), offered))
    assert balanced()
    # Delivered segments are deleted; the disk has room again.
    assert len(list(qdir.glob("*.seg"))) == 1
    assert free_bytes(tmpfs) > 900 * 1024

    # 2. Delivered data in the active segment, then something else fills the disk.
    offer(40)
    delivered += drain(q)
    filler = fill(tmpfs)
    dropped = q.stats()["dropped_items_total"]
    offer(1)  # room comes from the delivered frames: nothing is lost
    assert q.stats()["dropped_items_total"] == dropped
    assert q.queued_items == 1
    offer(200)  # now nothing is left to make room with: these are dropped, and counted
    assert q.stats()["dropped_items_total"] > dropped
    assert balanced()

    # 3. Space returns: appends succeed again without further drops.
    filler.unlink()
    dropped = q.stats()["dropped_items_total"]
    offer(500)
    assert q.stats()["dropped_items_total"] == dropped
    assert len(messages(caplog, "writing again")) == 1
    got = drain(q)
    assert ids(got)[-500:] == list(range(offered - 500, offered))
    delivered += got
    assert balanced() and q.queued_items == 0
    assert len(list(qdir.glob("*.seg"))) == 1
    q.close()
    # A restart finds nothing to re-deliver beyond the active segment's header.
    with DiskQueue(qdir, max_bytes=64 << 20, segment_bytes=SEGMENT) as again:
        assert again.queued_items == 0


def test_full_disk_while_rotating_does_not_wedge_the_queue(tmpfs: Path) -> None:
    """Rotation is where the old queue got stuck: a failed segment creation left an empty
    file behind, and every later O_EXCL creation of that id failed, space or not."""
    qdir = tmpfs / "queue"
    q = DiskQueue(qdir, max_bytes=64 << 20, segment_bytes=16 * 1024, fsync=FsyncPolicy("none"))
    for i in range(15):  # just under one segment
        q.append(payload(i), 1)
    assert drain(q) == [payload(i) for i in range(15)]
    filler = fill(tmpfs)
    for i in range(15, 30):  # the second of these rotates, on a full disk
        q.append(payload(i), 1)
    filler.unlink()
    for i in range(30, 100):
        q.append(payload(i), 1)
    st = q.stats()
    got = drain(q)
    assert 15 + len(got) + st["dropped_items_total"] == 100
    assert ids(got)[-70:] == list(range(30, 100))
    # Delivered sealed segments are deleted: only the active one is left.
    assert len(list(qdir.glob("*.seg"))) == 1
    q.close()


def test_a_failed_write_after_a_rotation_is_not_counted_twice(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes the kernel refuse (EFBIG) a write past the limit: a real I/O error
    that is not a full disk. Frames written before the failure are queued and stay queued;
    the append reports them as such (no exception) and counts only the rest as dropped."""
    q = DiskQueue(tmp_path, max_bytes=4 << 20, segment_bytes=16 * 1024, fsync=FsyncPolicy("none"))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    small = [(payload(i), 1) for i in range(15)]
    big = (b"x" * 100_000, 1)  # rotates first, then exceeds the limit in the new segment
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        q.append_many([*small, big])  # Python ignores SIGXFSZ: the write fails with EFBIG
        with pytest.raises(OSError) as failed:
            q.append_many([big])  # nothing of this one could be queued: that is an error
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert failed.value.errno == errno.EFBIG
    st = q.stats()
    assert (q.queued_items, st["dropped_items_total"], st["write_errors_total"]) == (15, 1, 1)
    assert drain(q) == [p for p, _ in small]
    q.append_many([big])  # and the queue is fine afterwards
    assert drain(q) == [big[0]]
    q.close()
