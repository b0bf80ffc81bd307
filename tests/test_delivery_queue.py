"""DiskQueue: order, checkpoint, segment rotation, crash recovery, quota, fsync policy."""

from __future__ import annotations

import os
import textwrap
import time
from collections import deque
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.procs import kill_when_counted
from wattspan.agent.delivery import DiskQueue, FsyncPolicy, QueueBatch, QueueLockedError
from wattspan.agent.delivery import queue as queue_module
from wattspan.agent.delivery.queue import HEADER_SIZE, encode_frame


def drain(q: DiskQueue, max_items: int = 1000, max_bytes: int = 1 << 20) -> list[bytes]:
    out: list[bytes] = []
    while (b := q.read(max_items, max_bytes)) is not None:
        out.extend(b.payloads)
        q.commit(b)
    return out


def segments(d: Path) -> list[Path]:
    return sorted(d.glob("*.seg"))


def payload(i: int, size: int = 20) -> bytes:
    return f"{i:08d}".encode().ljust(size, b".")


def fill(q: DiskQueue, ids: range, size: int = 20) -> None:
    """Append ``payload(i, size)`` for each ``i`` in ``ids``, one frame (of one item) each."""
    for i in ids:
        q.append(payload(i, size), 1)


def read_batch(q: DiskQueue, max_items: int) -> QueueBatch:
    """The next batch of up to ``max_items`` items (no byte limit to speak of); one must be
    there."""
    b = q.read(max_items, 1 << 20)
    assert b is not None
    return b


def drain_reopened(d: Path) -> list[bytes]:
    """Open the queue in ``d`` again (as the next process would) and drain it."""
    with DiskQueue(d, fsync=FsyncPolicy("none")) as q:
        return drain(q)


def test_fifo_order_across_segments_and_restarts(tmp_path):
    q = DiskQueue(tmp_path, max_bytes=1 << 20, segment_bytes=4096, fsync=FsyncPolicy("none"))
    fill(q, range(1000))
    assert len(segments(tmp_path)) > 5  # rotation happened
    first = read_batch(q, 100)
    assert first.payloads == [payload(i) for i in range(100)]
    q.commit(first)
    q.close()

    q = DiskQueue(tmp_path, max_bytes=1 << 20, segment_bytes=4096, fsync=FsyncPolicy("none"))
    assert q.queued_items == 900
    rest = drain(q, max_items=37)
    assert rest == [payload(i) for i in range(100, 1000)]
    assert q.queued_items == 0
    # Consumed segments are deleted; only the active one is left.
    assert len(segments(tmp_path)) == 1
    q.close()


def test_read_limits_and_item_counts(tmp_path):
    with DiskQueue(tmp_path, fsync=FsyncPolicy("none")) as q:
        q.append_many([(b"a" * 100, 10), (b"b" * 100, 10), (b"c" * 5000, 3)])
        b1 = q.read(15, 1 << 20)
        assert b1 is not None and b1.counts == [10] and b1.count == 10  # 10+10 > 15
        q.commit(b1)
        b2 = q.read(1000, 150)
        assert b2 is not None and b2.payloads == [b"b" * 100]  # 100+5000 > 150 bytes
        q.commit(b2)
        b3 = q.read(1, 10)  # a frame above both limits still comes out, alone
        assert b3 is not None and b3.payloads == [b"c" * 5000] and b3.count == 3
        q.commit(b3)
        assert q.read(10, 10) is None
        assert q.stats()["appended_items_total"] == 23


def test_uncommitted_batch_is_read_again_after_restart(tmp_path):
    q = DiskQueue(tmp_path, fsync=FsyncPolicy("none"))
    fill(q, range(10))
    assert read_batch(q, 4).count == 4
    q.close()  # no commit: e.g. the server never answered
    assert drain_reopened(tmp_path) == [payload(i) for i in range(10)]


def test_abandon_rewinds(tmp_path):
    with DiskQueue(tmp_path, fsync=FsyncPolicy("none")) as q:
        fill(q, range(5))
        q.abandon(read_batch(q, 3))
        assert q.unread_items == 5
        assert drain(q) == [payload(i) for i in range(5)]


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(lambda f: f[:5], id="half-header"),
        pytest.param(lambda f: f[:-3], id="half-payload"),
        pytest.param(lambda f: f[:-1] + bytes([f[-1] ^ 0xFF]), id="bad-crc"),
        pytest.param(lambda f: b"\xff\xff\xff\x7f" + f[4:], id="absurd-length"),
    ],
)
def test_torn_tail_is_detected_and_truncated(tmp_path, garbage):
    with DiskQueue(tmp_path, fsync=FsyncPolicy("none")) as q:
        for i in range(10):
            q.append(payload(i), 2)
    seg = segments(tmp_path)[-1]
    good_size = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(garbage(encode_frame(payload(10), 2)))  # a crash in the middle of append

    q = DiskQueue(tmp_path, fsync=FsyncPolicy("none"))
    assert seg.stat().st_size == good_size
    assert q.queued_items == 20
    assert q.stats()["corrupt_bytes_total"] > 0
    q.append(payload(11), 2)  # appends continue after the truncation point
    assert drain(q) == [payload(i) for i in range(10)] + [payload(11)]
    q.close()


def test_segment_without_header_is_discarded(tmp_path):
    with DiskQueue(tmp_path, segment_bytes=4096, max_bytes=1 << 20, fsync=FsyncPolicy("none")) as q:
        fill(q, range(3))
    last = segments(tmp_path)[-1]
    nxt = last.with_name(f"{int(last.stem) + 1:020d}.seg")
    nxt.write_bytes(b"WSQ")  # creation of a new segment torn after 3 bytes
    with DiskQueue(tmp_path, fsync=FsyncPolicy("none")) as q:
        q.append(payload(3))
        assert drain(q) == [payload(i) for i in range(4)]


def test_corrupt_checkpoint_means_redelivery_not_loss(tmp_path):
    with DiskQueue(tmp_path, fsync=FsyncPolicy("none")) as q:
        fill(q, range(6))
        q.commit(read_batch(q, 4))
    (tmp_path / "checkpoint").write_bytes(b"garbage")
    assert drain_reopened(tmp_path) == [payload(i) for i in range(6)]  # at-least-once


def test_no_checkpoint_write_after_close(tmp_path):
    # A commit racing close() must not write once close() has synced the checkpoint: by then
    # the directory lock may belong to the next process.
    q = DiskQueue(tmp_path, fsync=FsyncPolicy("batch"))
    fill(q, range(4))
    b = read_batch(q, 2)
    q.commit(b)
    before = (tmp_path / "checkpoint").read_bytes()
    q.close()
    q._persist((b.segment, b.end + 1000), [])  # what the losing side of the race does
    assert (tmp_path / "checkpoint").read_bytes() == before
    assert drain_reopened(tmp_path) == [payload(2), payload(3)]


CHILD = textwrap.dedent(
    """
    import sys
    from wattspan.agent.delivery import DiskQueue, FsyncPolicy
    q = DiskQueue(sys.argv[1], segment_bytes=8192, max_bytes=1 << 30,
                  fsync=FsyncPolicy.parse(sys.argv[2]))
    i = 0
    while True:
        q.append_many([(b"%08d" % (i + j) * 8, 1) for j in range(7)])
        i += 7
        print(i, flush=True)
    """
)


@pytest.mark.parametrize("fsync", ["batch", "200", "none"])
def test_sigkill_during_appends_keeps_every_acknowledged_item(tmp_path, fsync):
    acked = kill_when_counted(CHILD, [str(tmp_path), fsync], 3000)
    got = drain_reopened(tmp_path)
    # Every acknowledged item, in order; beyond them at most the one write in progress (a
    # write spanning a segment rotation may be cut in two: it was not acknowledged).
    assert acked <= len(got) <= acked + 7
    assert got == [b"%08d" % i * 8 for i in range(len(got))]


CONSUMER = textwrap.dedent(
    """
    import sys
    from wattspan.agent.delivery import DiskQueue, FsyncPolicy
    q = DiskQueue(sys.argv[1], segment_bytes=8192, max_bytes=1 << 30,
                  fsync=FsyncPolicy.parse(sys.argv[2]))
    q.append_many([(b"%08d" % i * 8, 1) for i in range(20000)])
    done = 0
    while True:
        b = q.read(7, 1 << 20)
        q.commit(b)
        done += b.count
        print(done, flush=True)
    """
)


@pytest.mark.parametrize("fsync", ["batch", "none"])
def test_sigkill_after_commits_resumes_after_the_last_commit(tmp_path, fsync):
    committed = kill_when_counted(CONSUMER, [str(tmp_path), fsync], 2000)
    got = drain_reopened(tmp_path)
    # Nothing committed comes back, beyond the one commit that may have been under way.
    first = int(got[0][:8])
    assert committed <= first <= committed + 7
    assert got == [b"%08d" % i * 8 for i in range(first, 20000)]


def test_quota_drops_oldest_segments_and_counts(tmp_path):
    dropped: list[tuple[int, int]] = []
    q = DiskQueue(
        tmp_path,
        max_bytes=64 * 1024,
        fsync=FsyncPolicy("none"),
        on_drop=lambda items, nbytes: dropped.append((items, nbytes)),
    )
    n = 5000
    for i in range(n):
        q.append(payload(i, 100), 1)
        assert q.disk_bytes <= 64 * 1024
    st = q.stats()
    assert st["dropped_items_total"] > 0
    assert sum(items for items, _ in dropped) == st["dropped_items_total"]
    assert st["queued_items"] + st["dropped_items_total"] == n
    got = drain(q)
    # The survivors are exactly the newest items, in order.
    assert got == [payload(i, 100) for i in range(n - len(got), n)]
    assert len(got) == st["queued_items"]
    q.close()


def test_quota_drop_of_a_batch_in_flight(tmp_path):
    q = DiskQueue(tmp_path, max_bytes=64 * 1024, fsync=FsyncPolicy("none"))
    fill(q, range(50), size=100)
    held = read_batch(q, 10)  # the consumer is stuck sending this one
    assert not q.is_stale(held)
    fill(q, range(50, 2000), size=100)
    assert q.is_stale(held)
    before = q.stats()["dropped_items_total"]
    q.abandon(held, 10)
    st = q.stats()
    assert st["dropped_items_total"] == before + 10
    assert st["queued_items"] + st["dropped_items_total"] == 2000
    got = drain(q)
    assert got == [payload(i, 100) for i in range(2000 - len(got), 2000)]

    # The same situation, but the held batch is delivered after all: counted as delivered.
    fill(q, range(2000, 2050), size=100)
    held = read_batch(q, 10)
    fill(q, range(2050, 4000), size=100)
    assert q.is_stale(held)
    dropped = q.stats()["dropped_items_total"]
    q.commit(held)
    st = q.stats()
    assert st["dropped_items_total"] == dropped
    assert st["queued_items"] + st["dropped_items_total"] + 10 + len(got) == 4000
    q.close()


def test_one_process_per_queue_directory(tmp_path):
    with DiskQueue(tmp_path) as q:
        with pytest.raises(QueueLockedError):
            DiskQueue(tmp_path)
        q.append(b"x")
    with DiskQueue(tmp_path) as q:  # released on close
        assert drain(q) == [b"x"]


class _FsyncCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = os.fsync

        def counting(fd: int) -> None:
            self.calls += 1
            real(fd)

        monkeypatch.setattr(queue_module.os, "fsync", counting)


def test_fsync_batch_syncs_every_append(tmp_path, monkeypatch):
    counter = _FsyncCounter(monkeypatch)
    with DiskQueue(tmp_path, fsync=FsyncPolicy("batch")) as q:
        before = counter.calls
        fill(q, range(20))
        assert counter.calls - before >= 20
        assert q.stats()["fsyncs_total"] >= 20


def test_fsync_none_never_syncs_data(tmp_path, monkeypatch):
    counter = _FsyncCounter(monkeypatch)
    q = DiskQueue(tmp_path, fsync=FsyncPolicy("none"))
    fill(q, range(20))
    q.commit(read_batch(q, 100))
    q.close()
    assert counter.calls == 0


def test_fsync_interval_syncs_in_background_not_per_append(tmp_path, monkeypatch):
    counter = _FsyncCounter(monkeypatch)
    q = DiskQueue(tmp_path, fsync=FsyncPolicy.parse(50))  # every 50 ms
    assert q.fsync_policy == FsyncPolicy("interval", 0.05)
    fill(q, range(200))
    appends_done = time.monotonic()
    # Background sync catches up (the timeout only bounds a hang).
    while q.stats()["fsyncs_total"] == 0:
        assert time.monotonic() - appends_done < 30
        time.sleep(0.01)
    assert q.stats()["fsyncs_total"] < 200  # not one per append
    assert counter.calls >= 1
    q.close()


def test_fsync_interval_long_interval_syncs_on_close(tmp_path, monkeypatch):
    counter = _FsyncCounter(monkeypatch)
    q = DiskQueue(tmp_path, fsync=FsyncPolicy.parse(3_600_000))
    fill(q, range(10))
    assert counter.calls == 0
    q.close()
    assert counter.calls >= 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("batch", FsyncPolicy("batch")),
        ("always", FsyncPolicy("batch")),
        (0, FsyncPolicy("batch")),
        ("none", FsyncPolicy("none")),
        (250, FsyncPolicy("interval", 0.25)),
        ("100ms", FsyncPolicy("interval", 0.1)),
        (1.5, FsyncPolicy("interval", 0.0015)),
    ],
)
def test_fsync_policy_parse(value, expected):
    assert FsyncPolicy.parse(value) == expected


@pytest.mark.parametrize("value", ["sometimes", -1, True, None, [1]])
def test_fsync_policy_parse_rejects(value):
    with pytest.raises(ValueError):
        FsyncPolicy.parse(value)


QUEUE_EXAMPLES = int(os.environ.get("WATTSPAN_QUEUE_EXAMPLES", "60"))

# A model-based check: any interleaving of appends, reads, commits, abandons and restarts
# delivers exactly the appended payloads, in order, at least once (exactly once if every
# read batch is committed before a restart).
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 5)),
        st.tuples(st.just("read"), st.integers(1, 8)),
        st.just(("commit", 0)),
        st.just(("abandon", 0)),
        st.just(("restart", 0)),
    ),
    max_size=60,
)


@settings(max_examples=QUEUE_EXAMPLES, deadline=None)
@given(ops=_ops)
def test_queue_matches_fifo_model(tmp_path_factory, ops):
    d = tmp_path_factory.mktemp("model")
    q = DiskQueue(d, segment_bytes=4096, max_bytes=1 << 20, fsync=FsyncPolicy("none"))
    model: deque[bytes] = deque()  # committed-not-yet items, in order
    next_id = 0
    held = None
    try:
        for op, n in ops:
            if op == "append":
                q.append_many([(payload(next_id + j, 300), 1) for j in range(n)])
                model.extend(payload(next_id + j, 300) for j in range(n))
                next_id += n
            elif op == "read" and held is None:
                held = q.read(n, 1 << 20)
                if held is not None:
                    assert held.payloads == list(model)[: len(held.payloads)]
            elif op == "commit" and held is not None:
                q.commit(held)
                for _ in held.payloads:
                    model.popleft()
                held = None
            elif op == "abandon" and held is not None:
                q.abandon(held)
                held = None
            elif op == "restart":
                q.close()
                held = None
                q = DiskQueue(d, segment_bytes=4096, max_bytes=1 << 20, fsync=FsyncPolicy("none"))
            assert q.queued_items == len(model)
        if held is not None:
            q.abandon(held)
        assert drain(q, max_items=3) == list(model)
        assert q.queued_items == 0
    finally:
        q.close()


def test_header_size_is_the_empty_segment_size(tmp_path):
    with DiskQueue(tmp_path) as q:
        assert q.disk_bytes == HEADER_SIZE


@settings(max_examples=QUEUE_EXAMPLES, deadline=None)
@given(ops=_ops, cache=st.sampled_from([0, 2048, 1 << 20]))
def test_quota_invariants_under_any_interleaving(tmp_path_factory, ops, cache):
    """With a tiny quota: what comes out is in order, never twice, and every appended item
    is accounted for as delivered, dropped or still queued."""
    d = tmp_path_factory.mktemp("quota")

    def open_queue() -> DiskQueue:
        return DiskQueue(d, max_bytes=16384, fsync=FsyncPolicy("none"), memory_cache_bytes=cache)

    q = open_queue()
    next_id = 0
    appended = delivered = 0  # since the queue was (re)opened
    last = -1
    held = None
    try:
        for op, n in ops:
            if op == "append":
                q.append_many([(payload(next_id + j, 900), 1) for j in range(n)])
                next_id += n
                appended += n
            elif op == "read" and held is None:
                held = q.read(n, 1 << 20)
            elif op == "commit" and held is not None:
                ids = [int(p[:8]) for p in held.payloads]
                assert ids == sorted(ids) and ids[0] > last  # FIFO, nothing twice
                last = ids[-1]
                # Even if the quota dropped its segment meanwhile (is_stale), a committed
                # batch was delivered, and it is not counted as dropped.
                delivered += held.count
                q.commit(held)
                held = None
            elif op == "abandon" and held is not None:
                q.abandon(held)
                held = None
            elif op == "restart":
                q.close()
                held = None
                q = open_queue()
                appended, delivered = q.queued_items, 0
            st_ = q.stats()
            assert q.disk_bytes <= 16384
            assert delivered + st_["dropped_items_total"] + st_["queued_items"] == appended
    finally:
        if held is not None:
            q.abandon(held)
        q.close()


def test_queue_and_dead_letter_files_are_owner_only(tmp_path):
    """Under a umask of 022 every file is 0600 and every directory created 0700; a lock file
    an older agent left 0644 is tightened (it is the queue's own)."""
    import stat

    from wattspan.agent.delivery import DeadLetterFile

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    qdir = tmp_path / "state" / "queue"
    old = os.umask(0o022)
    try:
        qdir.mkdir(parents=True)
        (qdir / "lock").touch(0o644)
        qdir.chmod(0o755)  # there already: left as it is
        q = DiskQueue(qdir, max_bytes=1 << 20, segment_bytes=4096, fsync=FsyncPolicy("none"))
        fill(q, range(300))
        drain(q)  # writes the checkpoint
        q.close()
        dead = DeadLetterFile(tmp_path / "new" / "dead.jsonl", max_bytes=400)
        for i in range(3):  # rotated to dead.jsonl.1 on the way
            dead.write({"records": i, "line_protocol": "m v=1 " + "x" * 100})
    finally:
        os.umask(old)
    files = sorted(p.name for p in qdir.iterdir())
    assert "checkpoint" in files and "lock" in files and any(f.endswith(".seg") for f in files)
    assert {p.name: mode(p) for p in qdir.iterdir()} == dict.fromkeys(files, 0o600)
    assert mode(qdir) == 0o755
    dead_files = {p.name: mode(p) for p in (tmp_path / "new").iterdir()}
    assert dead_files == {"dead.jsonl": 0o600, "dead.jsonl.1": 0o600}
    assert mode(tmp_path / "new") == 0o700
