"""wattspan's instrumentation API end to end: user code in a child process -> OTLP -> receiver.

User code runs in a fresh interpreter because the API configures the process-global
OpenTelemetry tracer provider once, lazily, and flushes at exit: both are part of what is
tested, and neither may leak into the pytest process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import wattspan.instrument as w
from tests.servers import unused_url
from wattspan.agent.receiver import OtlpReceiver
from wattspan.agent.records import LogRecord, MetricPoint, SpanRecord
from wattspan.agent.store import Store


def _is_program_root(s: SpanRecord) -> bool:
    return s.name == "wattspan.run" and "wattspan.run.name" in s.resource_attributes


class Collector:
    def __init__(self) -> None:
        self.spans: list[SpanRecord] = []
        self.program_roots: list[SpanRecord] = []
        self.requests: list[int] = []  # spans per OTLP request
        self._lock = threading.Lock()

    def on_spans(self, spans: list[SpanRecord]) -> None:
        with self._lock:
            # A program that no `wattspan run` started opens a run of its own and ends it at
            # exit with a root span: kept apart, so tests count the spans their code made.
            own = [s for s in spans if _is_program_root(s)]
            self.program_roots.extend(own)
            self.spans.extend(s for s in spans if not _is_program_root(s))
            self.requests.append(len(spans))

    def on_metrics(self, points: list[MetricPoint]) -> None:
        pass

    def on_logs(self, logs: list[LogRecord]) -> None:
        pass

    def named(self, name: str) -> list[SpanRecord]:
        return [s for s in self.spans + self.program_roots if s.name == name]

    def one(self, name: str) -> SpanRecord:
        found = self.named(name)
        assert len(found) == 1, f"expected one span {name!r}, got {len(found)}"
        return found[0]


@pytest.fixture
def collector() -> Collector:
    return Collector()


def run_user_code(
    tmp_path: Path,
    code: str,
    endpoint: str | None,
    extra_env: dict[str, str] | None = None,
    script: str = "job.py",
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as a script in a clean interpreter (no inherited OTEL_/WATTSPAN_ vars)."""
    path = tmp_path / script
    path.write_text(textwrap.dedent(code))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "WATTSPAN_"))}
    if endpoint is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    env.update(extra_env or {})
    proc = subprocess.run(
        [sys.executable, str(path)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"user code failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def endpoint_of(receiver: OtlpReceiver) -> str:
    return f"http://127.0.0.1:{receiver.port}"


def last_json(stdout: str) -> Any:
    return json.loads(stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# spans


def test_nested_spans_params_tags_errors_and_resource(
    tmp_path: Path, receiver: OtlpReceiver, collector: Collector
) -> None:
    proc = run_user_code(
        tmp_path,
        """
        import json, os
        import wattspan.instrument as w

        params = {"lr": 0.01, "opt": {"name": "adam", "betas": [0.9, 0.99]}}
        with w.span("outer", params=params, epoch=3, **{"db.system": "sqlite"}):
            with w.span("inner", note=None, shape=(2, 3)) as s:
                s.set_attribute("custom", 1)
            try:
                with w.span("failing"):
                    raise ValueError("bad batch")
            except ValueError:
                pass
        print(json.dumps({"pid": os.getpid()}))
        """,
        endpoint_of(receiver),
        {"WATTSPAN_RUN_ID": "run-42"},
        script="my_job.py",
    )
    pid = last_json(proc.stdout)["pid"]
    assert len(collector.spans) == 3
    outer, inner, failing = (collector.one(n) for n in ("outer", "inner", "failing"))
    assert outer.parent_span_id is None
    assert inner.parent_span_id == outer.span_id and failing.parent_span_id == outer.span_id
    assert {s.trace_id for s in collector.spans} == {outer.trace_id}
    assert outer.start_ns <= inner.start_ns <= inner.end_ns <= failing.start_ns <= outer.end_ns
    # Every span carries the CPU time its process and thread measured over it; the outer
    # span's covers the inner one's.
    keys = ("wattspan.cpu.process_seconds", "wattspan.cpu.thread_seconds")
    cpu = {s.name: tuple(s.attributes.pop(k) for k in keys) for s in (outer, inner, failing)}
    assert all(0.0 <= v < 5.0 for pair in cpu.values() for v in pair)
    assert cpu["outer"][0] >= cpu["inner"][0] + cpu["failing"][0]
    assert outer.attributes == {
        "wattspan.tag.epoch": 3,
        "db.system": "sqlite",
        "ml.param.lr": 0.01,
        "ml.param.opt.name": "adam",
        "ml.param.opt.betas": [0.9, 0.99],
        "ml.hyperparameters": json.dumps(
            {"lr": 0.01, "opt": {"name": "adam", "betas": [0.9, 0.99]}}, sort_keys=True
        ),
    }
    assert inner.attributes == {
        "wattspan.tag.note": "null",  # None is not an OTel value: sent as JSON text
        "wattspan.tag.shape": [2, 3],
        "custom": 1,
    }
    assert failing.status_code == "error"
    assert failing.status_message == "ValueError: bad batch"
    assert [e.name for e in failing.events] == ["exception"]
    assert failing.events[0].attributes["exception.type"] == "ValueError"
    assert outer.status_code == "unset"  # the exception was handled inside
    for s in collector.spans:
        assert s.pid == pid
        assert s.service_name == "my_job"  # the script name
        assert s.resource_attributes["wattspan.run_id"] == "run-42"
        assert s.scope_name == "wattspan"


def test_service_name_from_env(
    tmp_path: Path, receiver: OtlpReceiver, collector: Collector
) -> None:
    run_user_code(
        tmp_path,
        """
        import wattspan.instrument as w
        with w.span("x"):
            pass
        """,
        endpoint_of(receiver),
        {"OTEL_SERVICE_NAME": "trainer"},
    )
    span = collector.one("x")
    assert span.service_name == "trainer"
    # Without WATTSPAN_RUN_ID the program is a run of its own, named after its service,
    # ended by a root span that covers the process's life.
    res = span.resource_attributes
    assert len(res["wattspan.run_id"]) == 36 and res["wattspan.run.name"] == "trainer"
    (root,) = collector.program_roots
    assert root.resource_attributes["wattspan.run_id"] == res["wattspan.run_id"]
    assert root.start_ns <= span.start_ns and root.end_ns >= span.end_ns
    assert res["wattspan.run.start_time_unix_nano"] <= root.start_ns + 1
    assert "process.exit.code" not in root.attributes


def test_track_forms(tmp_path: Path, receiver: OtlpReceiver, collector: Collector) -> None:
    proc = run_user_code(
        tmp_path,
        """
        import json
        import wattspan.instrument as w

        @w.track
        def plain(x):
            return x * 2

        @w.track("custom-name")
        def named():
            return "n"

        @w.track(name="kw-name")
        def kw(*, a=1):
            return a

        class Model:
            @w.track
            def forward(self):
                return plain(1)

        @w.track
        def boom():
            raise KeyError("k")

        out = [plain(2), named(), kw(a=5), Model().forward(), plain.__name__, plain.__doc__]
        try:
            boom()
        except KeyError:
            out.append("raised")
        print(json.dumps(out))
        """,
        endpoint_of(receiver),
    )
    assert last_json(proc.stdout) == [4, "n", 5, 2, "plain", None, "raised"]
    names = sorted(s.name for s in collector.spans)
    assert names == sorted(["plain", "plain", "custom-name", "kw-name", "Model.forward", "boom"])
    forward = collector.one("Model.forward")
    nested = [s for s in collector.named("plain") if s.parent_span_id == forward.span_id]
    assert len(nested) == 1
    boom = collector.one("boom")
    assert boom.status_code == "error" and boom.status_message == "KeyError: 'k'"


def test_many_threads(tmp_path: Path, receiver: OtlpReceiver, collector: Collector) -> None:
    run_user_code(
        tmp_path,
        """
        import contextvars, threading
        from concurrent.futures import ThreadPoolExecutor
        import wattspan.instrument as w

        start = threading.Barrier(8)

        def worker(t):
            start.wait()  # all threads create spans at the same time
            with w.span("thread", t=t):
                for j in range(50):
                    with w.span("work", t=t, j=j):
                        w.count_items(1)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()

        # Context handed to pool threads explicitly: children must hang under "fan-out".
        with w.span("fan-out"):
            with ThreadPoolExecutor(4) as pool:
                futures = [
                    pool.submit(contextvars.copy_context().run, w.track(name="task")(lambda: 1))
                    for _ in range(20)
                ]
                assert sum(f.result() for f in futures) == 20
        """,
        endpoint_of(receiver),
    )
    threads = {s.attributes["wattspan.tag.t"]: s for s in collector.named("thread")}
    assert sorted(threads) == list(range(8))
    work = collector.named("work")
    assert len(work) == 400
    assert len({s.span_id for s in collector.spans}) == len(collector.spans) == 8 + 400 + 1 + 20
    for s in work:
        parent = threads[s.attributes["wattspan.tag.t"]]
        assert s.parent_span_id == parent.span_id and s.trace_id == parent.trace_id
        assert s.attributes["wattspan.items"] == 1
    assert all(s.parent_span_id is None for s in threads.values())
    assert "wattspan.items" not in threads[0].attributes
    fan = collector.one("fan-out")
    assert all(s.parent_span_id == fan.span_id for s in collector.named("task"))
    assert len({s.trace_id for s in threads.values()}) == 8


def test_async_functions(tmp_path: Path, receiver: OtlpReceiver, collector: Collector) -> None:
    proc = run_user_code(
        tmp_path,
        """
        import asyncio, json
        from opentelemetry import trace
        import wattspan.instrument as w

        @w.track
        async def leaf(k, i):
            trace.get_current_span().set_attribute("k", k)
            await asyncio.sleep(0.01)  # interleave with the other tasks
            return k * 10 + i

        @w.track("outer-task")
        async def outer(k):
            trace.get_current_span().set_attribute("k", k)
            return await asyncio.gather(leaf(k, 0), leaf(k, 1))

        async def main():
            return await asyncio.gather(*(outer(k) for k in range(4)))

        print(json.dumps(asyncio.run(main())))
        """,
        endpoint_of(receiver),
    )
    assert last_json(proc.stdout) == [[0, 1], [10, 11], [20, 21], [30, 31]]
    outers = {s.attributes["k"]: s for s in collector.named("outer-task")}
    assert sorted(outers) == [0, 1, 2, 3]
    leaves = collector.named("leaf")
    assert len(leaves) == 8
    for leaf in leaves:
        parent = outers[leaf.attributes["k"]]
        assert leaf.parent_span_id == parent.span_id
        assert parent.start_ns <= leaf.start_ns <= leaf.end_ns <= parent.end_ns
    assert all(s.parent_span_id is None for s in outers.values())


def test_generators(tmp_path: Path, receiver: OtlpReceiver, collector: Collector) -> None:
    proc = run_user_code(
        tmp_path,
        """
        import asyncio, json
        import wattspan.instrument as w

        @w.track
        def batches(n):
            for i in range(n):
                with w.span("load", i=i):
                    pass
                got = yield i
                if got is not None:
                    yield got

        @w.track("failing-gen")
        def failing():
            yield 1
            raise RuntimeError("reader broke")

        @w.track
        async def agen(n):
            for i in range(n):
                with w.span("aload"):
                    await asyncio.sleep(0)
                yield i

        out = {}
        with w.span("consumer"):
            out["items"] = []
            for b in batches(3):
                with w.span("use", b=b):
                    out["items"].append(b)
            g = batches(5)
            out["send"] = [next(g), g.send("echo")]
            g.close()  # early stop: not an error
            try:
                list(failing())
            except RuntimeError:
                out["raised"] = True

        async def main():
            with w.span("amain"):
                return [x async for x in agen(3)]

        out["async"] = asyncio.run(main())
        print(json.dumps(out))
        """,
        endpoint_of(receiver),
    )
    assert last_json(proc.stdout) == {
        "items": [0, 1, 2],
        "send": [0, "echo"],
        "raised": True,
        "async": [0, 1, 2],
    }
    consumer = collector.one("consumer")
    gens = collector.named("batches")
    assert len(gens) == 2 and all(g.parent_span_id == consumer.span_id for g in gens)
    full = max(
        gens,
        key=lambda g: len([s for s in collector.named("load") if s.parent_span_id == g.span_id]),
    )
    loads = [s for s in collector.named("load") if s.parent_span_id == full.span_id]
    assert len(loads) == 3  # the generator body runs inside the generator's span...
    uses = collector.named("use")
    assert len(uses) == 3
    assert all(u.parent_span_id == consumer.span_id for u in uses)  # ...the consumer does not
    assert all(g.status_code == "unset" for g in gens)  # close() is not an error
    failing = collector.one("failing-gen")
    assert failing.status_code == "error" and "reader broke" in failing.status_message
    amain, agen = collector.one("amain"), collector.one("agen")
    assert agen.parent_span_id == amain.span_id
    aloads = collector.named("aload")
    assert len(aloads) == 3 and all(s.parent_span_id == agen.span_id for s in aloads)


# ---------------------------------------------------------------------------------------------
# ML values


def test_log_metric_and_confusion_matrix(
    tmp_path: Path, receiver: OtlpReceiver, collector: Collector
) -> None:
    run_user_code(
        tmp_path,
        """
        import numpy as np
        import wattspan.instrument as w

        with w.span("train"):
            for step in range(3):
                w.log_metric("loss", 1.0 / (step + 1), step=step)
                w.log_metric("ml.accuracy", np.float32(0.5 + step / 10), step=np.int64(step))
            w.log_metric("lr", 3)
            w.log_confusion_matrix(np.array([[5, 1], [2, 7]]), ["cat", "dog"], step=2)
            w.log_confusion_matrix([[0.5, 0.5], [0.0, 1.0]], [0, 1])
        """,
        endpoint_of(receiver),
    )
    train = collector.one("train")
    metrics = [e for e in train.events if e.name == "ml.metric"]
    assert [(e.attributes["ml.metric.name"], e.attributes.get("ml.step")) for e in metrics] == [
        ("ml.loss", 0),
        ("ml.accuracy", 0),
        ("ml.loss", 1),
        ("ml.accuracy", 1),
        ("ml.loss", 2),
        ("ml.accuracy", 2),
        ("ml.lr", None),  # no step given: no ml.step attribute
    ]
    values = [e.attributes["ml.metric.value"] for e in metrics]
    assert values[0::2][:3] == [1.0, 0.5, 1.0 / 3]
    assert values[1::2][:3] == pytest.approx([0.5, 0.6, 0.7], rel=1e-6)
    assert values[-1] == 3.0 and isinstance(values[-1], float)
    times = [e.time_ns for e in train.events]
    assert times == sorted(times)
    assert train.start_ns <= times[0] and times[-1] <= train.end_ns
    cms = [e for e in train.events if e.name == "ml.confusion_matrix"]
    assert len(cms) == 2
    assert json.loads(cms[0].attributes["ml.confusion_matrix.matrix"]) == [[5, 1], [2, 7]]
    assert cms[0].attributes["ml.confusion_matrix.labels"] == ["cat", "dog"]
    assert cms[0].attributes["ml.step"] == 2
    assert json.loads(cms[1].attributes["ml.confusion_matrix.matrix"]) == [[0.5, 0.5], [0.0, 1.0]]
    assert cms[1].attributes["ml.confusion_matrix.labels"] == ["0", "1"]
    assert "ml.step" not in cms[1].attributes


def test_values_outside_spans_go_to_the_run_root(
    tmp_path: Path, receiver: OtlpReceiver, collector: Collector
) -> None:
    run_user_code(
        tmp_path,
        """
        import wattspan.instrument as w
        w.log_params({"seed": 1, "model": {"depth": 4}})
        w.log_metric("loss", 0.1, step=0)
        w.count_items(5)
        with w.span("a"):
            w.log_params({"inside": True})
            w.log_params({"again": 2})
        w.log_params({"batch": 8})
        """,
        endpoint_of(receiver),
    )
    root = collector.one("wattspan.run")
    a = collector.one("a")
    assert root.parent_span_id is None and a.parent_span_id is None  # separate roots
    assert root.attributes["ml.param.seed"] == 1
    assert root.attributes["ml.param.model.depth"] == 4
    assert root.attributes["ml.param.batch"] == 8
    assert json.loads(root.attributes["ml.hyperparameters"]) == {
        "seed": 1,
        "model": {"depth": 4},
        "batch": 8,
    }
    assert root.attributes["wattspan.items"] == 5
    assert [e.attributes["ml.metric.name"] for e in root.events] == ["ml.loss"]
    assert json.loads(a.attributes["ml.hyperparameters"]) == {"inside": True, "again": 2}
    assert a.start_ns >= root.start_ns and root.end_ns >= a.end_ns


def test_count_items(tmp_path: Path, receiver: OtlpReceiver, collector: Collector) -> None:
    run_user_code(
        tmp_path,
        """
        import contextvars, threading
        from opentelemetry import trace
        import wattspan.instrument as w

        @w.track
        def step(n):
            w.count_items(n)

        with w.span("outer"):
            w.count_items(10)
            with w.span("inner"):
                w.count_items(3)
                w.count_items(3)
            step(7)
            w.count_items(0.5)

        # Many threads counting into one span (context copied into each thread).
        with w.span("shared"):
            def add():
                for _ in range(1000):
                    w.count_items(1)
            threads = [
                threading.Thread(target=contextvars.copy_context().run, args=(add,))
                for _ in range(4)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        # A span created with the plain OpenTelemetry API.
        with trace.get_tracer("other").start_as_current_span("foreign"):
            w.count_items(2)
            w.count_items(2)

        with w.span("none-counted"):
            pass
        """,
        endpoint_of(receiver),
    )
    items = {s.name: s.attributes.get("wattspan.items") for s in collector.spans}
    assert items == {
        "outer": 10.5,  # children's items are theirs, not the parent's
        "inner": 6,
        "step": 7,
        "shared": 4000,
        "foreign": 4,
        "none-counted": None,
    }


# ---------------------------------------------------------------------------------------------
# configuration and failure policy


def test_user_provider_is_respected(
    tmp_path: Path, receiver: OtlpReceiver, collector: Collector
) -> None:
    proc = run_user_code(
        tmp_path,
        """
        import json
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        import wattspan.instrument as w

        memory = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(memory))
        trace.set_tracer_provider(provider)

        @w.track
        def f():
            w.log_metric("loss", 1.0)

        with w.span("mine"):
            f()
        names = sorted(s.name for s in memory.get_finished_spans())
        print(json.dumps([names, w._QUEUE is None, w.dropped_spans()]))
        """,
        endpoint_of(receiver),
    )
    assert last_json(proc.stdout) == [["f", "mine"], True, 0]
    assert collector.spans == []  # wattspan installed no exporter of its own


@pytest.mark.parametrize("runtime", ["short", "long"])
def test_no_agent_never_blocks_or_raises(tmp_path: Path, runtime: str) -> None:
    """No agent: the program runs, exits promptly, logs one warning and a total at exit."""
    sleep = 2.5 if runtime == "long" else 0.0  # long: exports fail while the program runs
    endpoint = unused_url()
    start = time.monotonic()
    proc = run_user_code(
        tmp_path,
        f"""
        import time
        import wattspan.instrument as w

        @w.track
        def f(i):
            w.log_metric("loss", 1.0 / (i + 1), step=i)
            w.count_items(1)

        with w.span("run", params={{"lr": 0.1}}):
            t0 = time.monotonic()
            for i in range(3000):  # more than the span queue holds
                f(i)
            took = time.monotonic() - t0
            time.sleep({sleep})
            for i in range(100):
                f(i)
        w.log_params({{"after": True}})
        print(f"done in {{took:.3f}}s")
        """,
        endpoint,
        {"OTEL_BSP_MAX_QUEUE_SIZE": "1000"},
    )
    elapsed = time.monotonic() - start
    assert "done in" in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 2, f"expected a warning and a total:\n{proc.stderr}"
    warning, total = lines
    assert warning.startswith(f"wattspan: agent unreachable at {endpoint} ("), warning
    # 3100 calls of f, "run" and the run root "wattspan.run" (log_params outside any span).
    assert total == "wattspan: 3102 of 3102 spans dropped (agent unreachable: 3102)"
    # Generous sanity bound only (interpreter start + 3000 spans + sleep + bounded exit flush).
    assert elapsed < 30 + sleep


def test_exit_flush_delivers_everything(
    tmp_path: Path, receiver: OtlpReceiver, collector: Collector
) -> None:
    run_user_code(
        tmp_path,
        """
        import wattspan.instrument as w
        for i in range(1500):
            with w.span("quick", i=i):
                pass
        """,
        endpoint_of(receiver),
        # Without the exit flush nothing would be sent: the batch delay is far away.
        {"OTEL_BSP_SCHEDULE_DELAY": "600000"},
    )
    assert sorted(s.attributes["wattspan.tag.i"] for s in collector.named("quick")) == list(
        range(1500)
    )


# ---------------------------------------------------------------------------------------------
# bursts: backpressure while the agent is reachable, counted drops when it is not

BURST = 100_000

# One thread ending spans as fast as it can: faster than one export thread can encode them,
# which is what lost a third of such a burst to the SDK's BatchSpanProcessor.
BURST_CODE = f"""
import json, time
import wattspan.instrument as w

@w.track
def step(i):
    return i

step(-1)  # the first call configures the provider (imports): not part of the burst
t0 = last = time.perf_counter()
worst = 0.0
for i in range({BURST}):
    step(i)
    now = time.perf_counter()
    worst = max(worst, now - last)
    last = now
print(json.dumps({{"loop_s": last - t0, "worst_call_s": worst, "dropped": w.dropped_spans()}}))
"""


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "WATTSPAN_"))}


def test_burst_from_one_thread_arrives_complete_under_wattspan_run(tmp_path: Path) -> None:
    script = tmp_path / "burst.py"
    script.write_text(BURST_CODE)
    store_path = tmp_path / "runs.db"
    child = [sys.executable, str(script)]
    p = subprocess.run(
        [sys.executable, "-m", "wattspan", "run", "--store", str(store_path), "--", *child],
        env=clean_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    report = json.loads(next(ln for ln in p.stdout.splitlines() if ln.startswith('{"loop_s"')))
    assert report["dropped"] == 0
    assert "dropped" not in p.stderr, p.stderr  # neither the warning nor the exit total
    (run,) = Store(store_path).runs()
    steps = [s for s in Store(store_path).spans(run.id) if s.name == "step"]
    # Complete: every call once (the store keeps one copy of a span sent twice)...
    assert len(steps) == BURST + 1
    # ...and attributed: the run's samples covered every span, however short.
    unattributed = [s for s in steps if "cpu_seconds" not in s.resources]
    assert unattributed == [], f"{len(unattributed)} spans without resources"


def test_burst_with_no_agent_finishes_quickly_and_counts_drops(tmp_path: Path) -> None:
    endpoint = unused_url()
    start = time.monotonic()
    proc = run_user_code(tmp_path, BURST_CODE, endpoint)
    elapsed = time.monotonic() - start
    report = last_json(proc.stdout)
    # Nothing waits for an agent that is not there: gRPC's first "failed to connect" stops the
    # backpressure, where waiting for the exporter to give up after its retry takes ~1 s.
    assert report["worst_call_s"] < 0.5, report
    # Everything beyond the queue (8192) and the batch in flight (1024) is already counted.
    assert BURST - 8192 - 1024 <= report["dropped"] <= BURST + 1, report
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 2, proc.stderr
    assert [line for line in lines if endpoint in line] == [lines[0]]
    assert lines[0].startswith(f"wattspan: agent unreachable at {endpoint} (")
    assert "failed to connect" in lines[0].lower()
    # The burst, the enclosing span, and the program's run root ended at exit.
    assert lines[1] == f"wattspan: {BURST + 2} of {BURST + 2} spans dropped " + (
        f"(agent unreachable: {BURST + 2})"
    )
    assert elapsed < 20, f"{elapsed:.1f} s"


def test_small_queue_from_env_applies_backpressure_not_loss(
    tmp_path: Path, receiver: OtlpReceiver, collector: Collector
) -> None:
    proc = run_user_code(
        tmp_path,
        """
        import json
        import wattspan.instrument as w

        @w.track
        def f(i):
            return i

        for i in range(20000):
            f(i)
        q = w._QUEUE
        print(json.dumps([q.max_queue, q._batch, w.dropped_spans()]))
        """,
        endpoint_of(receiver),
        {
            "OTEL_BSP_MAX_QUEUE_SIZE": "64",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "32",
            "OTEL_BSP_SCHEDULE_DELAY": "600000",  # only a full batch sends, then the exit flush
            "OTEL_BSP_EXPORT_TIMEOUT": "soon",  # reported, default used, spans still sent
        },
    )
    assert last_json(proc.stdout) == [64, 32, 0]
    assert proc.stderr.splitlines() == [
        "wattspan: OTEL_BSP_EXPORT_TIMEOUT='soon' is not a positive integer; using 2000"
    ]
    assert len(collector.named("f")) == 20000
    assert len({s.span_id for s in collector.spans}) == 20000
    assert max(collector.requests) == 32 and len(collector.requests) >= 20000 // 32


class _StuckAgent(Collector):
    """Takes the first request and sits on it: reachable, but not keeping up."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def on_spans(self, spans: list[SpanRecord]) -> None:
        self.release.wait(30)
        super().on_spans(spans)


def test_queue_bound_reached_while_agent_is_stuck(tmp_path: Path) -> None:
    agent = _StuckAgent()
    with OtlpReceiver(agent, port=0) as receiver:
        try:
            proc = run_user_code(
                tmp_path,
                """
                import json, time
                import wattspan.instrument as w

                w._BLOCK_MAX_S = 0.5  # the library waits 5 s; the test has less patience

                @w.track
                def f(i):
                    return i

                t0 = time.perf_counter()
                for i in range(2000):
                    f(i)
                print(json.dumps([time.perf_counter() - t0, w.dropped_spans()]))
                """,
                endpoint_of(receiver),
                {
                    "OTEL_BSP_MAX_QUEUE_SIZE": "100",
                    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "50",
                    # Longer than the wait, so that it is the wait that runs out, not the export.
                    "OTEL_EXPORTER_OTLP_TIMEOUT": "30",
                },
            )
        finally:
            agent.release.set()
    took, dropped = last_json(proc.stdout)
    # One wait of 0.5 s, then drops without waiting: the batch in flight (50) and the full
    # queue (100) are all that is not counted yet.
    assert 0.5 <= took < 3.0
    assert dropped == 2000 - 150
    lines = proc.stderr.splitlines()
    assert len(lines) == 2, proc.stderr
    assert lines[0].startswith(
        "wattspan: span queue bound reached (1 span dropped so far): the agent at "
        f"{endpoint_of(receiver)} took no batch for 0.5 s while 100 spans waited"
    ), lines[0]
    # At exit the stuck request is abandoned after the 2 s budget, with what was queued.
    # 2000 calls and the program's run root, ended at exit into the full queue.
    assert lines[1] == (
        "wattspan: 2001 of 2001 spans dropped "
        "(queue bound reached: 1851, not sent by the exit deadline: 150)"
    )


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_forked_children_report_their_own_pid(
    tmp_path: Path, receiver: OtlpReceiver, collector: Collector
) -> None:
    proc = run_user_code(
        tmp_path,
        """
        import json, multiprocessing as mp, os
        import wattspan.instrument as w

        @w.track
        def job(i):
            with w.span("child-inner"):
                pass

        def child(i):
            job(i)

        if __name__ == "__main__":
            with w.span("parent-setup"):
                pass  # configures the provider before forking
            ctx = mp.get_context("fork")
            procs = [ctx.Process(target=child, args=(i,)) for i in range(2)]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
            print(json.dumps({"parent": os.getpid(), "children": [p.pid for p in procs]}))
        """,
        endpoint_of(receiver),
    )
    pids = last_json(proc.stdout)
    assert collector.one("parent-setup").pid == pids["parent"]
    jobs = collector.named("job")
    assert sorted(s.pid for s in jobs) == sorted(pids["children"])
    assert sorted(s.pid for s in collector.named("child-inner")) == sorted(pids["children"])
    # One run root, the parent's, ended at its exit: the forked children did not end it too.
    (root,) = collector.named("wattspan.run")
    assert root.pid == pids["parent"]


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_a_child_that_only_execs_gets_no_export_thread(
    tmp_path: Path, receiver: OtlpReceiver, collector: Collector
) -> None:
    # subprocess with a preexec_fn (pyspark's JVM launcher) runs the at-fork hooks in the
    # child before it closes its descriptors and execs: no thread of ours may run there.
    proc = run_user_code(
        tmp_path,
        """
        import json, subprocess, threading
        import wattspan.instrument as w

        def pre():
            with open(OUT, "w") as f:
                f.write(json.dumps([t.name for t in threading.enumerate()]))

        with w.span("before-the-spawn"):
            pass
        code = subprocess.run(["true"], preexec_fn=pre).returncode
        print(json.dumps({"code": code, "parent_threads": [t.name for t in threading.enumerate()]}))
        """.replace("OUT", repr(str(tmp_path / "child_threads.json"))),
        endpoint_of(receiver),
    )
    out = last_json(proc.stdout)
    assert out["code"] == 0
    assert "wattspan-export" in out["parent_threads"]  # the parent's own thread was up
    child = json.loads((tmp_path / "child_threads.json").read_text())
    assert child == ["MainThread"], child
    assert collector.one("before-the-spawn")


# ---------------------------------------------------------------------------------------------
# in-process checks that never create a span (so they configure nothing)


def test_track_rejects_non_callables() -> None:
    with pytest.raises(TypeError):
        w.track(42)  # type: ignore[call-overload]


def test_track_keeps_function_metadata() -> None:
    def documented(a: int) -> int:
        """Doc."""
        return a

    wrapped = w.track(documented)
    assert wrapped.__name__ == "documented" and wrapped.__doc__ == "Doc."
    assert wrapped.__wrapped__ is documented  # type: ignore[attr-defined]
    assert w.track("n")(documented).__name__ == "documented"


def test_confusion_matrix_shape_is_checked_first() -> None:
    with pytest.raises(ValueError, match="2x2"):
        w.log_confusion_matrix([[1, 2, 3], [4, 5, 6]], ["a", "b"])
    assert w._TRACER is None  # validation happened before any setup


def test_attribute_coercion() -> None:
    import numpy as np

    assert w._attr_value(np.int64(3)) == 3 and type(w._attr_value(np.int64(3))) is int
    assert w._attr_value([1, 2]) == [1, 2]
    assert w._attr_value([1, "a"]) == '[1,"a"]'  # mixed lists are not OTel values
    assert w._attr_value({"a": 1}) == '{"a":1}'
    assert w._attr_value(None) == "null"
    assert w._attr_value(object()).startswith("<object object")
    assert w._param_attributes({"a": {"b": {"c": 1}}, "d": "x"}) == {
        "ml.param.a.b.c": 1,
        "ml.param.d": "x",
        "ml.hyperparameters": '{"a": {"b": {"c": 1}}, "d": "x"}',
    }
    mixed_keys = w._param_attributes({1: "one", "two": 2})
    assert mixed_keys["ml.param.1"] == "one"
    assert json.loads(mixed_keys["ml.hyperparameters"]) == {"1": "one", "two": 2}
