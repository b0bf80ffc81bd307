"""The exporter's delivery policy, driven by a scripted transport.

The integration tests run against real influxd/VictoriaMetrics; the answers those servers
cannot be made to give on demand (429/503 with Retry-After, a 500, a 413 at an exact size)
are scripted here at the transport boundary: the HTTP client is replaced, not the policy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http import HTTPStatus

import pytest

from wattspan.agent.exporters.influxdb import InfluxDBExporter, parse_config, split_lines
from wattspan.agent.exporters.influxdb.transport import Response, TransportError
from wattspan.collectors.base import Sample

T0 = 1_700_000_000.0


class ScriptedTransport:
    """Answers with ``script(body) -> Response | Exception``; records every body."""

    def __init__(self, script: Callable[[bytes], Response | Exception]) -> None:
        self.script = script
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()

    def post(self, body: bytes, *, gzipped: bool, timeout: float) -> Response:
        with self.lock:
            self.bodies.append(body)
        r = self.script(body)
        if isinstance(r, Exception):
            raise r
        return r

    def create_database(self, timeout: float) -> Response:
        return Response(204)

    def close(self) -> None:
        pass

    def delivered_lines(self, ok: Callable[[bytes], bool]) -> list[bytes]:
        return [line for b in self.bodies if ok(b) for line in split_lines(b)]


def make(tmp_path, transport, **section) -> tuple[InfluxDBExporter, list[float]]:
    cfg = {
        "url": "http://127.0.0.1:9",
        "database": "d",
        "flush_interval": 0.01,
        "retry_initial_interval": 1.0,
        "retry_max_interval": 8.0,
        "queue_dir": str(tmp_path / "q"),
        "fsync": "none",
        **section,
    }
    exp = InfluxDBExporter(
        parse_config(cfg, state_dir=tmp_path, env={}), host="h", transport=transport, start=False
    )
    sleeps: list[float] = []
    exp._sleep = sleeps.append  # record the delays instead of sleeping them
    return exp, sleeps


def samples(n: int, start: int = 0) -> list[Sample]:
    return [Sample("m", T0 + i, {}, {"seq": i}) for i in range(start, start + n)]


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured(tmp_path, status):
    answers = iter(
        [
            Response(status, "busy", {"retry-after": "7"}),
            Response(status, "busy", {"retry-after": "2"}),
        ]
    )
    tr = ScriptedTransport(lambda body: next(answers, Response(204)))
    exp, sleeps = make(tmp_path, tr)
    exp.write(samples(3))
    exp.start()
    assert exp.drain(10)
    exp.close(1)
    assert sleeps == [7.0, 2.0]
    assert len(tr.bodies) == 3 and tr.bodies[0] == tr.bodies[2]  # the same batch again
    assert exp.stats()["retries_total"] == 2


def test_exponential_backoff_with_jitter_is_capped_and_reset(tmp_path):
    failures = 8
    calls = {"n": 0}

    def script(body: bytes) -> Response | Exception:
        calls["n"] += 1
        if calls["n"] <= failures:
            return TransportError("ConnectionRefusedError: [Errno 111] Connection refused")
        return Response(204)

    exp, sleeps = make(tmp_path, ScriptedTransport(script))
    exp.write(samples(1))
    exp.start()
    assert exp.drain(10)
    assert len(sleeps) == failures
    bases = [min(8.0, 1.0 * 2**i) for i in range(failures)]
    for s, base in zip(sleeps, bases, strict=True):
        assert base * 0.5 <= s <= base  # jitter within [base/2, base]
    assert max(sleeps) <= 8.0
    assert exp._backoff.attempts == 0  # reset by the success
    exp.close(1)


def test_5xx_and_auth_errors_are_retried_not_dropped(tmp_path):
    answers = iter(
        [
            Response(500, "boom"),
            Response(401, "Unauthorized"),
            Response(404, "nf", body='{"error":"database not found: \\"d\\""}'),
        ]
    )
    tr = ScriptedTransport(lambda body: next(answers, Response(204)))
    exp, _sleeps = make(tmp_path, tr)
    exp.write(samples(5))
    exp.start()
    assert exp.drain(10)
    st = exp.stats()
    assert st["sent_records_total"] == 5 and st["dead_lettered_records_total"] == 0
    assert st["retries_total"] == 3
    assert "database not found" in st["last_error"]
    exp.close(1)


def test_413_splits_recursively_in_order(tmp_path):
    limit = 3  # the "server" takes at most 3 lines per request

    def script(body: bytes) -> Response:
        return Response(413, "Too Large") if len(split_lines(body)) > limit else Response(204)

    tr = ScriptedTransport(script)
    exp, _ = make(tmp_path, tr, batch_size=50)
    exp.write(samples(50))
    exp.start()
    assert exp.drain(10)
    delivered = tr.delivered_lines(lambda b: len(split_lines(b)) <= limit)
    assert delivered == [f"m,host=h seq={i}i {int((T0 + i) * 1e9)}".encode() for i in range(50)]
    st = exp.stats()
    assert st["sent_records_total"] == 50 and st["dead_lettered_records_total"] == 0
    exp.close(1)


def test_413_single_point_goes_to_dead_letter(tmp_path):
    tr = ScriptedTransport(
        lambda body: Response(413, "Too Large") if b"big" in body else Response(204)
    )
    exp, _ = make(tmp_path, tr, batch_size=10)
    exp.write([*samples(4), Sample("big", T0, {}, {"x": 1}), *samples(4, 4)])
    exp.start()
    assert exp.drain(10)
    st = exp.stats()
    assert st["dead_lettered_records_total"] == 1 and st["sent_records_total"] == 8
    entries = exp._dead.read()
    assert [(e["status"], e["records"]) for e in entries] == [(413, 1)]
    assert entries[0]["line_protocol"].startswith("big,host=h x=1i")
    exp.close(1)


@pytest.mark.parametrize("status", [400, 422])
def test_rejected_batch_is_dead_lettered_once_and_later_batches_flow(tmp_path, status, caplog):
    tr = ScriptedTransport(
        lambda body: (
            Response(status, "Bad", body='{"error":"bad line"}')
            if b"seq=0i" in body
            else Response(204)
        )
    )
    exp, sleeps = make(tmp_path, tr, batch_size=2)
    exp.write(samples(2))
    exp.write(samples(2, 2))
    with caplog.at_level(logging.ERROR, logger="wattspan.agent.exporters.influxdb"):
        exp.start()
        assert exp.drain(10)
    assert len(tr.bodies) == 2  # never retried
    assert sleeps == []
    st = exp.stats()
    assert st["dead_lettered_records_total"] == 2 and st["sent_records_total"] == 2
    assert st["last_error"] == f"HTTP {status} {HTTPStatus(status).phrase}: bad line"
    assert len([r for r in caplog.records if "rejected" in r.getMessage()]) == 1
    exp.close(1)


def test_one_log_line_per_change_of_state(tmp_path, caplog):
    answers = iter(
        [TransportError("ConnectionRefusedError: refused")] * 5
        + [Response(503, "Unavailable")] * 3
        + [Response(204)]
        + [TransportError("ConnectionResetError: reset")] * 4
    )
    tr = ScriptedTransport(lambda body: next(answers, Response(204)))
    exp, _ = make(tmp_path, tr, batch_size=1)
    with caplog.at_level(logging.INFO, logger="wattspan.agent.exporters.influxdb"):
        exp.write(samples(1))
        exp.write(samples(1, 1))
        exp.start()
        assert exp.drain(10)
    msgs = [r.getMessage() for r in caplog.records]
    assert [m.split(":")[1].strip().split(" ")[0] for m in msgs] == [
        "server",  # unreachable (refused), queuing on disk
        "HTTP",  # the failure changed to 503
        "delivering",  # delivering again
        "server",  # unreachable (reset)
        "delivering",
    ], msgs
    assert "queuing on disk" in msgs[0] and "ConnectionRefusedError" in msgs[0]
    assert exp.stats()["retries_total"] == 12
    exp.close(1)


def test_close_during_outage_keeps_data_and_returns(tmp_path):
    tr = ScriptedTransport(lambda body: TransportError("ConnectionRefusedError: refused"))
    exp, _ = make(tmp_path, tr)
    exp._sleep = exp._interrupt.wait  # really wait, so that close has to interrupt it
    exp.write(samples(10))
    exp.start()
    while exp.stats()["retries_total"] < 1:
        time.sleep(0.01)
    exp.close(0.2)
    assert not exp._thread.is_alive()
    assert exp.stats()["queued_records"] == 10
    ok = ScriptedTransport(lambda body: Response(204))
    exp2, _ = make(tmp_path, ok)
    exp2.start()
    assert exp2.drain(10)
    assert len(ok.delivered_lines(lambda b: True)) == 10
    exp2.close(1)


def test_write_after_close_raises(tmp_path):
    exp, _ = make(tmp_path, ScriptedTransport(lambda b: Response(204)))
    exp.start()
    exp.close(1)
    with pytest.raises(RuntimeError):
        exp.write(samples(1))


def test_large_write_is_split_into_batch_size_frames(tmp_path):
    tr = ScriptedTransport(lambda b: Response(204))
    exp, _ = make(tmp_path, tr, batch_size=100)
    exp.write(samples(1050))
    exp.start()
    assert exp.drain(10)
    assert sum(len(split_lines(b)) for b in tr.bodies) == 1050
    assert max(len(split_lines(b)) for b in tr.bodies) <= 100
    exp.close(1)


def test_lone_surrogates_do_not_break_write(tmp_path):
    tr = ScriptedTransport(lambda b: Response(204))
    exp, _ = make(tmp_path, tr)
    exp.write([Sample("m", T0, {"t": "a\udcffb"}, {"s": "x\ud800"})])
    exp.start()
    assert exp.drain(10)
    assert tr.bodies == [f'm,host=h,t=a?b s="x?" {int(T0 * 1e9)}\n'.encode()]
    exp.close(1)


def test_stats_keys_and_invariant(tmp_path):
    answers = iter([Response(400, "Bad")])
    tr = ScriptedTransport(lambda body: next(answers, Response(204)))
    exp, _ = make(tmp_path, tr, batch_size=10)
    exp.write([*samples(10), Sample("m", T0, {}, {"x": float("nan")})])
    exp.write(samples(15, 10))
    exp.start()
    assert exp.drain(10)
    st = exp.stats()
    assert {
        "queued_records",
        "queue_bytes",
        "sent_records_total",
        "retries_total",
        "dropped_records_total",
        "dead_lettered_records_total",
        "last_error",
        "state",
    } <= set(st)
    assert st["written_records_total"] == 25
    assert st["written_records_total"] == (
        st["sent_records_total"]
        + st["dead_lettered_records_total"]
        + st["queue_dropped_records_total"]
        + st["queued_records"]
    )
    assert st["dropped_records_total"] == 1  # the NaN-only point
    assert all(isinstance(v, int | float) for k, v in st.items() if k.endswith("_total"))
    exp.close(1)
