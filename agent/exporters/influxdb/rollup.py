"""``spans_1m``: one-minute rollups of the attributed spans, built by the exporter itself.

Why in the agent: dashboards over a day of a busy pipeline cannot run ``percentile()`` over
raw spans (``bench/bench_dashboards.py``: 3.9 s for the Stages table over 1.7 M spans), and a
continuous query exists on InfluxDB 1.x only. Built here, the rollup is the same on 1.x,
2.x and VictoriaMetrics, and it travels through the exporter's disk queue with the spans.

One point per (minute, ``service``, ``span_name``) and agent process (``host`` is the
exporter's global tag): counts and sums, and the span durations as a cumulative log-spaced
histogram (``le_00`` .. ``le_96``: spans with duration <= ``BOUNDS[i]``), from which a query
computes p50/p95 over any range (:func:`influxql_quantile`). Not per ``run``: every run
would multiply the series a query over a day reads, and a query's cost grows with them
(97 fields each); ``runs_1m`` has the counts and sums per (minute, ``run``) instead.

**Merging** (docs/influxdb.md, "spans_1m"): a minute stays open in memory while spans of it
may still come (until the newest span seen ended :data:`HOLD_SECONDS` after the minute). Each
``write()`` that adds spans to an open minute re-emits that minute's *cumulative* point at the
same timestamp, so influxd keeps only the latest (same series and time: one point, later
fields win) and everything acknowledged is on disk. The timestamp is the minute's start plus
a *slot* that differs between agent processes (a generation counter kept in the queue
directory) and between reopenings of a minute (spans later than the hold): such points are
distinct, and queries sum them. So a query's ``sum()`` over a minute is exact whatever the
order and grouping in which its spans arrived, across flushes and restarts.

**Top spans** (``spans_top``): per minute and stage, the :data:`TOP_K` longest spans and
the :data:`TOP_K` spans with the most process-share energy, with their trace and span ids
(the Pipelines dashboard's Slowest/Costliest tables: ``top()`` over raw spans read every
span of the range). Each ranking has ``TOP_K`` *seats* (tag ``seat``), written at the
minute's slot timestamp: a span that enters a full ranking takes the seat of the one it
pushes out, so a write re-emits only the seats it changed, and influxd keeps, per seat, the
latest occupant. The stored seats of one slot are therefore that slot's top-K; slots
(processes, reopenings) hold disjoint spans, and the top-K of a union is within the union
of the top-Ks: ``top(..., K)`` over the stored seats is the exact top-K of any whole minutes.

**Duplicates**: a span seen again by this process (same trace and span id) is not counted
twice. A span re-exported by a *restarted* agent (the crash window between export and the
store's mark, see agent/ingest.py) is: the new process cannot know the old one counted it.
"""

from __future__ import annotations

import bisect
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wattspan.agent.exporters.influxdb.lineprotocol import PRECISIONS
from wattspan.collectors.base import Sample

MEASUREMENT = "spans_1m"
#: Counts and sums per (minute, run): which runs had spans when (dashboards' annotations).
RUNS_MEASUREMENT = "runs_1m"
MINUTE = 60

#: Histogram bounds: 2**(k/4) s for k in -48..48, 244 us to 68 min, ratio GAMMA apart.
BOUND_EXPONENTS = tuple(range(-48, 49))
GAMMA = 2.0**0.25
BOUNDS: tuple[float, ...] = tuple(2.0 ** (k / 4) for k in BOUND_EXPONENTS)
BUCKET_FIELDS: tuple[str, ...] = tuple(f"le_{i:02d}" for i in range(len(BOUNDS)))
#: Largest relative error of a quantile from the histogram, for a true value within the
#: bounds: the estimate is the geometric middle of the bucket holding it.
MAX_RELATIVE_ERROR = math.sqrt(GAMMA) - 1.0

#: Summed fields, copied from the span's own field of the same name when it has one.
SUMS: tuple[str, ...] = (
    "cpu_seconds",
    "process_energy_joules",
    "node_energy_total_joules",
    "gpu_energy_total_joules",
    "items",
)
#: Rollup tags, taken from the span (``host`` comes from the exporter's global tags).
TAGS: tuple[str, ...] = ("service", "span_name")

#: Measurement of the top spans per minute, tag set and ranking (see the module docstring).
TOP_MEASUREMENT = "spans_top"
#: Spans kept per minute, tag set and ranking: the rows of the dashboard's top-N tables.
TOP_K = 20
#: Ranking (the ``by`` tag) -> the span field it ranks by, largest first.
RANKINGS: tuple[tuple[str, str], ...] = (
    ("duration", "duration_seconds"),
    ("energy", "process_energy_joules"),
)
#: Fields a top span keeps (numbers where the span had them; the ids and run as strings).
TOP_FIELDS: tuple[str, ...] = (
    "trace_id",
    "span_id",
    "run",
    "duration_seconds",
    "process_energy_joules",
    "cpu_seconds",
)
SEATS: tuple[str, ...] = tuple(f"{i:02d}" for i in range(TOP_K))

#: A minute is kept open until a span ending this long after its end has been seen.
HOLD_SECONDS = 300.0
#: Open minutes kept at most (the oldest are closed first); bounds memory: ~1.2 KB each for
#: the sums and histogram, plus up to 2 x TOP_K top spans (~0.3 KB each, ~13 KB when full).
DEFAULT_MAX_OPEN = 5_000
#: (trace id, span id) hashes remembered per generation for de-duplication.
SEEN_PER_GENERATION = 65_536

GENERATION_FILE = "rollup.generation"


def bucket_index(duration: float) -> int:
    """Index of the first bound >= ``duration`` (``len(BOUNDS)``: above the last)."""
    if not duration > BOUNDS[0]:  # also NaN and negative durations
        return 0
    i = math.ceil(4.0 * math.log2(duration)) - BOUND_EXPONENTS[0]
    # log2 rounding: step to the exact bound.
    while i > 0 and i <= len(BOUNDS) and BOUNDS[i - 1] >= duration:
        i -= 1
    while i < len(BOUNDS) and BOUNDS[i] < duration:
        i += 1
    return min(i, len(BOUNDS))


def quantile(cumulative: Sequence[int], n: int, q: float) -> float | None:
    """The ``q`` quantile of a histogram as the queries compute it: the geometric middle of
    the bucket where the cumulative share first reaches ``q``."""
    if n <= 0:
        return None
    # The count of buckets with q - c/n > 0 (the InfluxQL's CEIL terms, same arithmetic):
    # a prefix, since c only grows.
    k = bisect.bisect_left(cumulative, True, key=lambda c: not q - c / n > 0)
    return BOUNDS[0] * GAMMA ** (k - 0.5)


def influxql_quantile(q: float, prefix: str = "") -> str:
    """InfluxQL of :func:`quantile` over summed fields: ``CEIL(q - c/n)`` is 1 while the
    cumulative share ``c/n`` (in [0, 1]) is below ``q``, else 0; their sum ``k`` picks the
    bucket. ``prefix`` wraps names (``'sum('`` for an aggregate, ``''`` over a subquery)."""
    close = ")" if prefix else ""
    n = f'{prefix}"count"{close}'
    terms = " + ".join(f'CEIL({q:g} - {prefix}"{f}"{close} / {n})' for f in BUCKET_FIELDS)
    return f"EXP({math.log(BOUNDS[0]):.12g} + ({terms} - 0.5) * {math.log(GAMMA):.12g})"


def next_generation(queue_dir: Path) -> int:
    """This process's generation: one more than the last, kept in the queue directory."""
    path = Path(queue_dir) / GENERATION_FILE
    try:
        last = int(path.read_text().strip() or "0")
    except (OSError, ValueError):
        last = 0
    gen = last + 1
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(f"{gen}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return gen


#: Key: (minute (unix s), STAGE, service, span_name) or (minute, RUN, run, "").
Key = tuple[int, int, str, str]
STAGE, RUN = 0, 1
#: How many of TOP_FIELDS are strings (they come first).
_STRINGS = 3
Row = tuple[Any, ...]  # a top span's TOP_FIELDS values (None where the span had none)


def _add_sums(sums: dict[str, float], f: dict[str, Any]) -> None:
    for k in SUMS:
        v = f.get(k)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            sums[k] = sums.get(k, 0.0) + float(v)


def _number(v: object) -> float | None:
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def _row(s: Sample) -> Row:
    """Span ``s``'s TOP_FIELDS (``run`` is one of its tags)."""
    f = s.fields
    values = [s.tags.get(k) if k == "run" else f.get(k) for k in TOP_FIELDS]
    return tuple(
        (x if isinstance(x, str) and x else None) if j < _STRINGS else _number(x)
        for j, x in enumerate(values)
    )


@dataclass(slots=True)
class _Top:
    """One ranking of one minute: ``TOP_K`` seats, each a (value, row), refilled by
    replacement so that a changed ranking rewrites only the seats that changed."""

    values: list[float] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    low: float = -math.inf  # the smallest value seated, once every seat is taken
    low_seat: int = 0

    def copy(self) -> _Top:
        return _Top(list(self.values), list(self.rows), self.low, self.low_seat)

    def offer(self, value: float, row: Row) -> int | None:
        """Seat ``row`` if it ranks; returns the seat it took (None: it does not rank)."""
        values = self.values
        if len(values) < TOP_K:
            values.append(value)
            self.rows.append(row)
            seat = len(values) - 1
            if len(values) == TOP_K:
                self._find_low()
            return seat
        if not value > self.low:  # ties keep the earlier span; most spans stop here
            return None
        seat = self.low_seat
        values[seat] = value
        self.rows[seat] = row
        self._find_low()
        return seat

    def _find_low(self) -> None:
        values = self.values
        self.low_seat = min(range(len(values)), key=values.__getitem__)
        self.low = values[self.low_seat]


@dataclass(slots=True)
class _Bucket:
    slot: int
    count: int = 0
    errors: int = 0
    duration: float = 0.0
    duration_max: float = 0.0
    sums: dict[str, float] = field(default_factory=dict)
    # Non-cumulative counts per bucket; the last one is above the top bound.
    hist: list[int] = field(default_factory=lambda: [0] * (len(BOUNDS) + 1))
    tops: tuple[_Top, ...] = field(default_factory=lambda: tuple(_Top() for _ in RANKINGS))
    # (ranking, seat) changed since this copy was made: the seats the next write emits.
    dirty: set[tuple[int, int]] = field(default_factory=set)

    def copy(self) -> _Bucket:
        return _Bucket(
            self.slot,
            self.count,
            self.errors,
            self.duration,
            self.duration_max,
            dict(self.sums),
            list(self.hist),
            tuple(t.copy() for t in self.tops),
        )

    def add(self, s: Sample) -> None:
        f = s.fields
        d = f.get("duration_seconds")
        d = float(d) if isinstance(d, int | float) and not isinstance(d, bool) else 0.0
        self.count += 1
        if s.tags.get("status") == "ERROR":
            self.errors += 1
        self.duration += d
        self.duration_max = max(self.duration_max, d)
        self.hist[bucket_index(d)] += 1
        _add_sums(self.sums, f)
        row: Row | None = None
        for i, (_, name) in enumerate(RANKINGS):
            v = f.get(name)
            if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
                continue
            top = self.tops[i]
            if len(top.values) == TOP_K and not v > top.low:
                continue  # offer() would refuse it: spare building the row
            if row is None:
                row = _row(s)
            seat = top.offer(float(v), row)
            if seat is not None:
                self.dirty.add((i, seat))

    def fields(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {
            "count": self.count,
            "errors": self.errors,
            "duration_seconds": self.duration,
            "duration_max_seconds": self.duration_max,
        }
        out.update(self.sums)
        cum = []
        c = 0
        for i in range(len(BOUNDS)):
            c += self.hist[i]
            cum.append(c)
        for q, name in ((0.5, "p50_seconds"), (0.95, "p95_seconds")):
            v = quantile(cum, self.count, q)
            if v is not None:
                out[name] = v
        out.update(zip(BUCKET_FIELDS, cum, strict=True))
        return out


@dataclass(slots=True)
class _RunBucket:
    """A (minute, run): counts and sums only."""

    slot: int
    count: int = 0
    errors: int = 0
    duration: float = 0.0
    sums: dict[str, float] = field(default_factory=dict)

    def copy(self) -> _RunBucket:
        return _RunBucket(self.slot, self.count, self.errors, self.duration, dict(self.sums))

    def add(self, s: Sample) -> None:
        f = s.fields
        d = f.get("duration_seconds")
        self.count += 1
        if s.tags.get("status") == "ERROR":
            self.errors += 1
        # As _Bucket counts it: the run's figures are the sums of its stages'.
        self.duration += float(d) if isinstance(d, int | float) and not isinstance(d, bool) else 0.0
        _add_sums(self.sums, f)

    def fields(self) -> dict[str, float | int]:
        return {
            "count": self.count,
            "errors": self.errors,
            "duration_seconds": self.duration,
            **self.sums,
        }


class _Seen:
    """Recently counted spans (two generations of hashes: bounded memory)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.new: set[int] = set()
        self.old: set[int] = set()

    def __contains__(self, h: int) -> bool:
        return h in self.new or h in self.old

    def add(self, h: int) -> None:
        if len(self.new) >= self.cap:
            self.old, self.new = self.new, set()
        self.new.add(h)


class SpanRollup:
    """Turns the ``spans`` samples of each exporter ``write`` into ``spans_1m``,
    ``spans_top`` and ``runs_1m`` samples.

    Use :meth:`write`: it stages the new cumulative points, hands them to ``append`` (the
    disk queue) and only then makes them the open state, all under one lock, so the order
    of the points in the queue is the order of the state, and a failed append changes
    nothing (the spans were not acknowledged either).
    """

    def __init__(
        self,
        *,
        generation: int,
        precision: str = "ns",
        max_open: int = DEFAULT_MAX_OPEN,
        hold: float = HOLD_SECONDS,
    ) -> None:
        self.precision = precision
        units = PRECISIONS[precision]  # timestamp units per second
        self._unit_ns = 1_000_000_000 // units
        self._slots = MINUTE * units
        self._stride = max(1, self._slots // 64)
        self._base = (generation * self._stride) % self._slots
        self.generation = generation
        self.max_open = max_open
        self.hold = hold
        self._open: dict[Key, _Bucket | _RunBucket] = {}
        # Minutes closed in this process -> the last slot they used (a reopening takes the
        # next one). Two generations, like _Seen.
        self._closed_new: dict[Key, int] = {}
        self._closed_old: dict[Key, int] = {}
        self._forgotten = 0
        self._seen = _Seen(SEEN_PER_GENERATION)
        self._watermark = -math.inf
        self._lock = threading.Lock()
        self.spans_total = 0
        self.duplicates_total = 0
        self.points_total = 0
        self.top_points_total = 0
        self.reopened_total = 0

    def _slot_for(self, key: Key) -> int:
        prev = self._closed_new.get(key, self._closed_old.get(key))
        if prev is not None:
            self.reopened_total += 1
            return (prev + 1) % self._slots
        if key[0] < self._watermark - MINUTE - self.hold:
            # Closed so long ago that even its slot is forgotten: a slot no reopening of a
            # remembered minute of this process takes (spread from the generation's base).
            self._forgotten += 1
            self.reopened_total += 1
            return (self._base + self._stride // 2 + self._forgotten) % self._slots
        return self._base

    def write(self, samples: Sequence[Sample], append: Callable[[list[Sample]], None]) -> int:
        """Count the spans of ``samples``, ``append`` the touched minutes' points; returns
        how many points were appended."""
        with self._lock:
            staged: dict[Key, _Bucket | _RunBucket] = {}
            ids: list[int] = []
            batch_ids: set[int] = set()
            top = self._watermark
            counted = 0
            for s in samples:
                if s.source != "spans":
                    continue
                f = s.fields
                tid, sid = f.get("trace_id"), f.get("span_id")
                if isinstance(tid, str) and isinstance(sid, str) and tid and sid:
                    h = hash((tid, sid))
                    if h in self._seen or h in batch_ids:
                        self.duplicates_total += 1
                        continue
                    batch_ids.add(h)
                    ids.append(h)
                t = s.tags
                minute = int(s.ts // MINUTE) * MINUTE
                key = (minute, STAGE, t.get("service", ""), t.get("span_name", ""))
                self._staged(staged, key).add(s)
                run = t.get("run")
                if run:
                    self._staged(staged, (minute, RUN, run, "")).add(s)
                counted += 1
                top = max(top, s.ts)
            if not staged:
                return 0
            points = [self._sample(k, b) for k, b in staged.items()]
            tops = [
                p
                for k, b in staged.items()
                if isinstance(b, _Bucket)
                for p in self._top_samples(k, b)
            ]
            points += tops
            append(points)
            # Appended: this is the state now.
            self._open.update(staged)
            for h in ids:
                self._seen.add(h)
            self.spans_total += counted
            self.points_total += len(points)
            self.top_points_total += len(tops)
            self._watermark = top
            self._close_old()
            return len(points)

    def _staged(self, staged: dict[Key, _Bucket | _RunBucket], key: Key) -> _Bucket | _RunBucket:
        """``key``'s bucket for this write: a copy of the open one, or a new one."""
        b = staged.get(key)
        if b is None:
            have = self._open.get(key)
            if have is not None:
                b = have.copy()
            elif key[1] == STAGE:
                b = _Bucket(self._slot_for(key))
            else:
                b = _RunBucket(self._slot_for(key))
            staged[key] = b
        return b

    def _sample(self, key: Key, b: _Bucket | _RunBucket) -> Sample:
        minute, kind, first, second = key
        ts_ns = self._ts_ns(key, b)
        if kind == RUN:
            return Sample(RUNS_MEASUREMENT, float(minute), {"run": first}, b.fields(), ts_ns=ts_ns)
        tags = {"service": first, "span_name": second}
        return Sample(MEASUREMENT, float(minute), tags, b.fields(), ts_ns=ts_ns)

    def _ts_ns(self, key: Key, b: _Bucket | _RunBucket) -> int:
        return key[0] * 1_000_000_000 + b.slot * self._unit_ns

    def _top_samples(self, key: Key, b: _Bucket) -> list[Sample]:
        """The seats this write changed, each at the minute's slot timestamp."""
        minute, _, service, name = key
        ts_ns = self._ts_ns(key, b)
        out = []
        for i, seat in sorted(b.dirty):
            tags = {"service": service, "span_name": name, "by": RANKINGS[i][0]}
            tags["seat"] = SEATS[seat]
            row = b.tops[i].rows[seat]
            fields = {k: v for k, v in zip(TOP_FIELDS, row, strict=True) if v is not None}
            out.append(Sample(TOP_MEASUREMENT, float(minute), tags, fields, ts_ns=ts_ns))
        b.dirty.clear()
        return out

    def _close_old(self) -> None:
        limit = self._watermark - MINUTE - self.hold
        old = [k for k in self._open if k[0] < limit]
        excess = len(self._open) - len(old) - self.max_open
        if excess > 0:
            old += sorted((k for k in self._open if k[0] >= limit), key=lambda k: k[0])[:excess]
        for k in old:
            b = self._open.pop(k)
            if len(self._closed_new) >= self.max_open * 4:
                self._closed_old, self._closed_new = self._closed_new, {}
            self._closed_new[k] = b.slot

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "rollup_spans_total": self.spans_total,
                "rollup_open_minutes": len(self._open),
                "rollup_points_total": self.points_total,
                "rollup_top_points_total": self.top_points_total,
                "rollup_duplicate_spans_total": self.duplicates_total,
                "rollup_reopened_minutes_total": self.reopened_total,
            }
