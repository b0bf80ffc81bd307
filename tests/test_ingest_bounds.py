"""One bad input disables nothing; the ingest's memory is bounded; a store error is retried.

Each test drives the real ``TelemetryIngest`` with a real SQLite store, as the receiver does.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pytest

from wattspan.agent.errors import Backpressure
from wattspan.agent.ingest import IngestLimits, TelemetryIngest
from wattspan.agent.pipeline import Pipeline
from wattspan.agent.records import SpanEvent, SpanRecord
from wattspan.agent.store import Store
from wattspan.collectors.base import Sample
from wattspan.collectors.process import ProcessCollector, _Tree


def _span(i: int, end: float, *, pid: int | None = None, attrs: dict | None = None) -> SpanRecord:
    return SpanRecord(
        trace_id=f"{7:032x}",
        span_id=f"{i + 1:016x}",
        parent_span_id=None,
        name="work",
        kind="internal",
        start_ns=int((end - 0.5) * 1e9),
        end_ns=int(end * 1e9),
        pid=pid,
        attributes=attrs or {},
    )


def _tick(ingest: TelemetryIngest, t: float) -> None:
    ingest.write(
        [
            Sample(
                "power_model",
                t,
                {"domain": "cpu", "estimated": "true"},
                {"energy_joules_total": 10.0 * t, "power_watts": 10.0, "idle_power_watts": 2.0},
            ),
            Sample("cpu", t, {"cpu": "total"}, {"user_seconds_total": t}),
        ]
    )


def _ingest(tmp_path: Path, **kw) -> tuple[TelemetryIngest, Store]:
    store = Store(tmp_path / "s.db")
    return TelemetryIngest(store=store, pipeline=Pipeline(), run_id="r", interval=0.05, **kw), store


def test_future_spans_are_rejected_and_do_not_hold_back_the_valid_ones(tmp_path: Path) -> None:
    ingest, store = _ingest(tmp_path)
    now = time.time()
    spans = [
        _span(0, now - 1),
        _span(1, now + 365 * 86400),
        _span(2, 7258118400.0),
        _span(3, now - 2),
    ]
    rejection = ingest.on_spans(spans)
    assert rejection is not None and rejection.count == 2
    assert any("after the agent's clock" in r for r in rejection.reasons)
    _tick(ingest, now - 3)
    _tick(ingest, now)
    assert ingest.attribute_due() == 2
    assert ingest.stats()["spans_pending"] == 0
    assert sorted(s.span_id for s in store.spans("r")) == [f"{1:016x}", f"{4:016x}"]
    assert all(s.resources for s in store.spans("r"))


def test_a_span_within_the_skew_allowance_is_kept(tmp_path: Path) -> None:
    ingest, store = _ingest(tmp_path, limits=IngestLimits(max_clock_skew_seconds=60.0))
    assert ingest.on_spans([_span(0, time.time() + 30)]) is None
    assert len(store.spans("r")) == 1


def test_many_future_spans_leave_nothing_pending(tmp_path: Path) -> None:
    ingest, store = _ingest(tmp_path)
    far = time.time() + 86400
    for chunk in range(30):
        rej = ingest.on_spans([_span(chunk * 1000 + i, far) for i in range(1000)])
        assert rej is not None and rej.count == 1000
    assert ingest.stats()["spans_pending"] == 0
    assert store.spans("r") == []


@pytest.mark.parametrize("pid", [-1, 0, 1, 2, 10**9])
def test_a_refused_pid_keeps_the_span_without_a_pid(tmp_path: Path, pid: int) -> None:
    pc = ProcessCollector()
    ingest, store = _ingest(tmp_path, process_collector=pc)
    rej = ingest.on_spans([_span(0, time.time() - 1, pid=pid)])
    assert rej is not None and rej.count == 0 and rej.reasons  # a warning, nothing dropped
    (row,) = store.spans("r")
    assert row.pid is None
    assert pc.dynamic_roots == 0
    assert pc.sample(time.time()) == []  # nothing watched, nothing raised


def test_a_real_client_pid_is_watched_and_the_bound_holds(tmp_path: Path) -> None:
    pc = ProcessCollector()
    ingest, _ = _ingest(
        tmp_path, process_collector=pc, limits=IngestLimits(max_watched_processes=1)
    )
    assert ingest.on_spans([_span(0, time.time() - 1, pid=os.getpid())]) is None
    assert pc.watches(os.getpid()) and pc.dynamic_roots == 1
    ingest.on_spans([_span(1, time.time() - 1, pid=os.getppid())])
    assert pc.dynamic_roots == 1
    assert ingest.stats()["processes_not_watched_total"] == 1


def test_a_root_that_fails_to_read_is_dropped_and_the_others_still_sampled() -> None:
    pc = ProcessCollector([os.getpid()])
    pc._trees[-1] = _Tree(root=-1, dynamic=True)  # what add_root now refuses to create
    with pytest.raises(ValueError):
        pc.add_root(-1)
    for _ in range(2):
        out = pc.sample(time.time())
        roots = {s.tags["root"] for s in out if s.source == "process_tree"}
        assert roots == {str(os.getpid())}
    assert pc.errors == 1


@pytest.mark.parametrize(
    "hp",
    ["[" * 50_000, json.dumps(json.loads("{" + '"a":{' * 299 + '"x":1' + "}" * 300)), "{not json"],
    ids=["50000-brackets", "300-levels", "not-json"],
)
def test_malformed_json_is_a_warning_and_the_span_is_stored_once(tmp_path: Path, hp: str) -> None:
    ingest, store = _ingest(tmp_path)
    span = _span(0, time.time() - 1, attrs={"ml.hyperparameters": hp})
    span.events.append(
        SpanEvent("ml.confusion_matrix", span.end_ns, {"ml.confusion_matrix.matrix": hp})
    )
    rej = ingest.on_spans([span])
    assert rej is not None and rej.count == 0
    assert any("ml.hyperparameters" in r for r in rej.reasons)
    assert len(store.spans("r")) == 1
    assert store.params("r") == {}
    assert store.confusion_matrices("r") == []


def test_past_the_pending_bound_a_request_is_refused_whole_then_accepted(tmp_path: Path) -> None:
    ingest, store = _ingest(tmp_path, limits=IngestLimits(max_pending_spans=10))
    now = time.time()
    ingest.on_spans([_span(i, now - 1) for i in range(8)])
    with pytest.raises(Backpressure, match="max_pending_spans"):
        ingest.on_spans([_span(100 + i, now - 1) for i in range(5)])
    assert len(store.spans("r")) == 8  # nothing of the refused request was kept
    assert ingest.stats()["spans_refused_backpressure_total"] == 5
    _tick(ingest, now - 2)
    _tick(ingest, now)
    assert ingest.attribute_due() == 8
    ingest.on_spans([_span(100 + i, now - 1) for i in range(5)])  # the client's retry
    assert len(store.spans("r")) == 13


def test_a_transient_store_error_is_retried_by_the_running_agent(tmp_path: Path) -> None:
    ingest, store = _ingest(tmp_path)
    real = store.set_batch_resources
    failures = []

    def flaky(items):
        if not failures:
            failures.append(1)
            raise sqlite3.OperationalError("database is locked")
        return real(items)

    store.set_batch_resources = flaky  # type: ignore[method-assign]
    now = time.time()
    ingest.on_spans([_span(i, now - 1) for i in range(3)])
    _tick(ingest, now - 2)
    ingest.start()
    try:
        _tick(ingest, now)
        deadline = time.monotonic() + 10
        while store.unattributed_batches() and time.monotonic() < deadline:
            _tick(ingest, time.time())
            time.sleep(0.05)
    finally:
        ingest.close(1.0)
    assert failures == [1]
    assert store.unattributed_batches() == []
    assert all(s.resources for s in store.spans("r"))
    stats = ingest.stats()
    assert stats["attribution_retries_total"] == 1 and stats["spans_pending"] == 0
