"""Line protocol encoder: exact output, types, what is dropped or substituted, splitting.

Exactness against a real parser is tested in test_influx_roundtrip.py; this file pins the
encoder's output and the documented substitutions for what line protocol cannot carry.
"""

from __future__ import annotations

import math
import re
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wattspan.agent.exporters.influxdb.lineprotocol import (
    AttributeTags,
    EncodeCounts,
    LineEncoder,
    _EventTimes,
    escape_field_key,
    escape_key,
    escape_measurement,
    escape_string,
    split_lines,
)
from wattspan.collectors.base import Sample

T = 1_700_000_000.5


def enc(samples, **kw):
    out: list[str] = []
    counts = LineEncoder(**kw).encode(samples, out)
    return out, counts


def test_basic_line_sorted_tags_typed_fields():
    out, c = enc(
        [Sample("cpu", T, {"cpu": "3", "a": "x"}, {"util": 0.25, "n": 7, "on": True, "s": "hi"})],
        global_tags={"host": "h1"},
    )
    assert out == ['cpu,a=x,cpu=3,host=h1 util=0.25,n=7i,on=true,s="hi" 1700000000500000000']
    assert (c.points, c.dropped_points, c.dropped_fields) == (1, 0, 0)


def test_sample_tag_wins_over_global_tag():
    out, _ = enc([Sample("m", T, {"host": "other"}, {"v": 1.0})], global_tags={"host": "h1"})
    assert out == ["m,host=other v=1.0 1700000000500000000"]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1.0"),
        (-0.0, "-0.0"),
        (0.1, "0.1"),
        (1e16, "1e+16"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (0, "0i"),
        (-(2**63), "-9223372036854775808i"),
        (2**63 - 1, "9223372036854775807i"),
        (False, "false"),
        ("", '""'),
        ('a "q" \\ b\nc', '"a \\"q\\" \\\\ b\nc"'),
    ],
)
def test_field_values(value, text):
    out, _c = enc([Sample("m", T, {}, {"f": value})])
    assert out == [f"m f={text} 1700000000500000000"]
    if isinstance(value, float):
        assert float(text) == value  # repr round-trips


def test_numpy_scalars():
    out, c = enc(
        [Sample("m", T, {}, {"a": np.float32(0.5), "b": np.int64(3), "c": np.bool_(True)})]
    )
    assert out == ["m a=0.5,b=3i,c=true 1700000000500000000"]
    assert c.dropped_fields == 0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 2**63, -(2**63) - 1, None, [1]])
def test_unwritable_values_are_dropped_and_counted(bad):
    out, c = enc([Sample("m", T, {}, {"bad": bad, "ok": 1.5})])
    assert out == ["m ok=1.5 1700000000500000000"]
    assert c.dropped_fields == 1 and c.dropped_points == 0


def test_point_without_writable_fields_is_dropped_and_counted():
    out, c = enc(
        [
            Sample("m", T, {}, {"x": math.nan}),
            Sample("m", T, {}, {}),
            Sample("m", T, {}, {"x": 2.0}),
        ]
    )
    assert out == ["m x=2.0 1700000000500000000"]
    assert (c.points, c.dropped_points, c.dropped_fields) == (1, 2, 1)


@pytest.mark.parametrize("bad", [math.nan, math.inf, None])
@pytest.mark.parametrize("fields", [{"x": 1.0}, {"x": "s"}])  # template and per-value path
def test_bad_timestamp_drops_point(bad, fields):
    out, c = enc([Sample("m", bad, {}, fields), Sample("m", T, {}, {"x": 2.0})])
    assert out == ["m x=2.0 1700000000500000000"]
    assert c.dropped_points == 1


@pytest.mark.parametrize(
    ("precision", "ts"),
    [
        ("ns", "1700000000123456768"),
        ("us", "1700000000123456"),
        ("ms", "1700000000123"),
        ("s", "1700000000"),
    ],
)
def test_precision_truncates(precision, ts):
    out, _ = enc([Sample("m", 1_700_000_000.123456789, {}, {"x": 1})], precision=precision)
    assert out == [f"m x=1i {ts}"]


def test_escaping_of_names():
    out, _ = enc([Sample("my meas,x=1", T, {"tag key,=": "v a,l=ue"}, {"f k,=": 1, 'q"': 2})])
    assert out == [
        'my\\ meas\\,x=1,tag\\ key\\,\\==v\\ a\\,l\\=ue f\\ k\\,\\==1i,q\\"=2i 1700000000500000000'
    ]


def test_backslashes_are_not_doubled_in_names():
    # influxd does not un-escape "\\\\" in names: a single backslash is written as is.
    assert escape_key("C:\\temp") == "C:\\temp"
    assert escape_key("a\\,b") == "a\\\\,b"  # literal backslash, then the escaped comma
    assert escape_string("C:\\temp") == '"C:\\\\temp"'  # but doubled in string values


# What line protocol cannot carry, and what the encoder writes instead (docs/influxdb.md).
@pytest.mark.parametrize(
    ("fn", "name", "written"),
    [
        (escape_key, "line1\nline2", "line1\\nline2"),  # LF: the two characters "\n"
        (escape_field_key, "a\nb", "a\\nb"),
        (escape_measurement, "a\nb", "a\\nb"),
        (escape_key, "trailing\\", "trailing"),  # trailing backslashes removed
        (escape_key, "x\\\\", "x"),
        (escape_measurement, "m\\", "m"),
        (escape_measurement, "\t\x00m", "m"),  # influxd skips leading tab/NUL
        (escape_field_key, "\tf", "f"),
        (escape_measurement, "a\\,b", "a\\,b"),  # backslash before , space = " removed
        (escape_measurement, "a\\=b", "a=b"),
        (escape_field_key, "a\\ b", "a\\ b"),  # odd backslash run before , = space: -1
        (escape_field_key, "a\\\\\\=b", "a\\\\\\=b"),
        (escape_field_key, "a\\\\=b", "a\\\\\\=b"),  # even run: kept, "=" escaped
    ],
)
def test_unrepresentable_substitutions(fn, name, written):
    assert fn(name) == written


def test_reserved_and_empty_names():
    out, c = enc(
        [
            Sample(
                "m", T, {"time": "x", "": "y", "empty": "", "ok": "1"}, {"time": 1, "": 2, "v": 3}
            ),
            Sample("#comment", T, {}, {"v": 1}),
            Sample("", T, {}, {"v": 1}),
        ]
    )
    assert out == ["m,ok=1 v=3i 1700000000500000000"]
    assert c.dropped_fields == 2 + 2  # "time" and "" fields, plus the fields of dropped points
    assert c.dropped_points == 2


def test_field_tags_become_string_fields():
    out, _ = enc(
        [Sample("spans", T, {"span": "load", "trace_id": "abc", "span_id": "01"}, {"d": 0.5})],
        field_tags=("trace_id", "span_id"),
        global_tags={"host": "h"},
    )
    assert out == ['spans,host=h,span=load trace_id="abc",span_id="01",d=0.5 1700000000500000000']


def test_series_cache_is_bounded_and_correct():
    e = LineEncoder(cache_size=10)
    out: list[str] = []
    samples = [Sample("m", T, {"id": str(i % 25)}, {"v": i}) for i in range(100)]
    e.encode(samples, out)
    assert out == [f"m,id={i % 25} v={i}i 1700000000500000000" for i in range(100)]
    assert len(e._series) <= 10


def test_same_tags_different_insertion_order_same_series():
    out, _ = enc(
        [
            Sample("m", T, {"a": "1", "b": "2"}, {"v": 1}),
            Sample("m", T, {"b": "2", "a": "1"}, {"v": 2}),
        ]
    )
    assert out[0].split(" ")[0] == out[1].split(" ")[0] == "m,a=1,b=2"


def test_frames_hold_at_most_batch_size_lines_in_order():
    samples = [Sample("m", T + i, {"k": str(i % 2)}, {"v": float(i)}) for i in range(5)]
    samples.insert(2, Sample("m", T, {}, {"s": "text"}))  # per-value path, mid-frame
    frames, counts = LineEncoder().encode_frames(samples, 2)
    assert [n for _, n in frames] == [2, 2, 2]
    assert counts.points == 6
    whole, _ = LineEncoder().encode_frames(samples, 100)
    assert b"".join(body for body, _ in frames) == whole[0][0]
    assert whole[0][0].splitlines()[2] == b'm s="text" 1700000000500000000'


def test_percent_signs_survive_the_templates():
    out, _ = enc(
        [
            Sample("m%s%%", T, {"t%d": "%s"}, {"f%": 1.5, "%si": 2}),  # template path
            Sample("m%s", T, {"t%d": "%(x)s"}, {"s%": "%s %%"}),  # per-value path
        ]
    )
    assert out == [
        "m%s%%,t%d=%s f%=1.5,%si=2i 1700000000500000000",
        'm%s,t%d=%(x)s s%="%s %%" 1700000000500000000',
    ]


def test_numeric_shapes_take_the_template_path_and_others_do_not():
    e = LineEncoder()
    e.encode_frames(
        [
            Sample("m", T, {}, {"a": 1.0, "b": 2, "c": True}),
            Sample("m", T, {}, {"a": "s"}),
            Sample("m", T, {}, {"a": np.float64(1.0)}),
        ],
        10,
    )
    assert sorted(e._shapes.values()) == [b"", b"", b"m a=%s,b=%si,c=%s %s"]


def test_drops_are_counted_once_when_a_chunk_falls_back_per_value():
    out, c = enc(
        [
            Sample("m", T, {}, {"s": "x", "bad": None}),  # per-value sample with one drop
            Sample("m", T, {}, {"x": math.nan, "y": 1.0}),  # NaN: the chunk is redone
            Sample("m", T, {}, {"big": 2**64 - 1}),  # orjson takes it, influx does not
        ]
    )
    assert out == ['m s="x" 1700000000500000000', "m y=1.0 1700000000500000000"]
    assert (c.points, c.dropped_points, c.dropped_fields) == (2, 1, 3)


_NUMBER = re.compile(r"(?<=[= ])(-?\d+(?:\.\d+)?(?:e[+-]?\d+)?)(?=[, ]|$)")


def _floats_normalised(line: str) -> str:
    """Same text for the same float however it is spelt (1e-05, 0.00001)."""
    return _NUMBER.sub(lambda m: repr(float(m.group(1))), line)


_numbers = st.one_of(
    st.floats(),
    st.integers(-(2**64), 2**64 + 5),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["m", "m%s", "cpu", "metrics"]),  # metrics: an event source
            st.dictionaries(st.sampled_from(["a", "b%", "c d"]), st.sampled_from(["1", "%s"])),
            st.dictionaries(st.sampled_from(["x", "y%i", "z,="]), _numbers, max_size=3),
        ),
        max_size=10,
    )
)
def test_template_path_writes_what_the_per_value_path_writes(points):
    samples = [Sample(m, T + i, t, f) for i, (m, t, f) in enumerate(points)]
    fast: list[str] = []
    fast_counts = LineEncoder(global_tags={"host": "h"}).encode(samples, fast)
    slow_counts = EncodeCounts()
    slow = LineEncoder(global_tags={"host": "h"})._encode_values(samples, slow_counts)
    assert [_floats_normalised(x) for x in fast] == [_floats_normalised(x) for x in slow]
    assert fast_counts.points == len(slow)
    assert (fast_counts.dropped_points, fast_counts.dropped_fields) == (
        slow_counts.dropped_points,
        slow_counts.dropped_fields,
    )


_text = st.text(
    st.one_of(st.sampled_from(list(',= "\\\n#')), st.characters(blacklist_categories=("Cs",))),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            _text.filter(bool),
            st.dictionaries(_text, _text, max_size=3),
            st.dictionaries(
                _text,
                st.one_of(_text, st.floats(), st.integers(-(2**63), 2**63 - 1), st.booleans()),
                max_size=3,
            ),
        ),
        max_size=12,
    )
)
def test_split_lines_recovers_points_even_with_newlines_in_strings(points):
    out: list[str] = []
    LineEncoder().encode([Sample(m, T, t, f) for m, t, f in points], out)
    body = ("\n".join(out) + "\n").encode() if out else b""
    assert split_lines(body) == [line.encode() for line in out]  # the scanner
    assert split_lines(body, len(out)) == [line.encode() for line in out]  # fast path or scan


# --- timestamps: integer nanoseconds, one point per event ---------------------------------


def _ts(line: str) -> int:
    return int(line.rsplit(" ", 1)[1])


@pytest.mark.parametrize("fields", [{"x": 1}, {"x": "s"}])  # template and per-value path
@pytest.mark.parametrize(("precision", "want"), [("ns", 123456789), ("ms", 123), ("s", 0)])
def test_ts_ns_is_used_exactly_when_set(fields, precision, want):
    whole = 1_700_000_000 * 10**9
    ns = whole + 123_456_789
    # ts says something else on purpose: ts_ns wins; ns precision keeps the last digit.
    out, _ = enc([Sample("m", 1.0, {}, fields, ts_ns=ns)], precision=precision)
    unit = {"ns": 1, "ms": 10**6, "s": 10**9}[precision]
    assert _ts(out[0]) == whole // unit + want


def _span(span_id: str, ts: float = T, **fields: object) -> Sample:
    return Sample(
        "spans",
        ts,
        {"span_name": "step"},
        {"trace_id": "t" * 32, "span_id": span_id, "duration_seconds": 0.5, **fields},
    )


@pytest.mark.parametrize("precision", ["ns", "us", "ms", "s"])
def test_events_of_one_series_and_time_get_timestamps_of_their_own(precision):
    e = LineEncoder(precision=precision)
    spans = [_span(f"{i:016x}") for i in range(500)]
    out: list[str] = []
    e.encode(spans, out)
    times = [_ts(line) for line in out]
    assert len(set(times)) == 500
    unit = {"ns": 1, "us": 1000, "ms": 10**6, "s": 10**9}[precision]
    first = int(T * 1e9) // unit
    if precision == "ns":  # to the microsecond, nanoseconds from the span id
        assert all(first - first % 1000 <= t < first - first % 1000 + 1500 for t in times)
    else:  # the first at its time, every other one unit later than the one before
        assert sorted(times) == list(range(first, first + 500))
    # Encoded again (a retry, a re-export): every span gets the timestamp it got before.
    again: list[str] = []
    e.encode(list(reversed(spans)), again)
    assert sorted(again) == sorted(out)


def test_span_timestamps_at_ns_depend_on_the_span_alone():
    """A fresh encoder (the agent after a restart) places a span where the first one did."""
    spans = [_span(f"{i:016x}", T + i * 1e-5) for i in range(200)]
    first: list[str] = []
    LineEncoder().encode(spans, first)
    later: list[str] = []
    LineEncoder().encode(spans[150:], later)
    assert later == first[150:]


def test_samples_of_a_series_are_not_moved():
    """Node samples are not events: one per series and tick; a second one at the same time
    is the same observation (last write wins, as influxd does)."""
    out, _ = enc([Sample("cpu", T, {"cpu": "0"}, {"v": 1.0})] * 2)
    assert _ts(out[0]) == _ts(out[1]) == int(T * 1e9)


def test_metric_events_with_equal_content_share_a_point_and_others_do_not():
    e = LineEncoder(precision="s")
    a = Sample("metrics", T, {"name": "q"}, {"value": 1.0, "step": 1})
    b = Sample("metrics", T, {"name": "q"}, {"value": 1.0, "step": 2})
    out: list[str] = []
    e.encode([a, b, a, b], out)
    assert [_ts(x) for x in out] == [int(T), int(T) + 1, int(T), int(T) + 1]
    # The same values at another time are another point, not a repeat of the first.
    later: list[str] = []
    e.encode([Sample("metrics", T + 10, {"name": "q"}, {"value": 1.0, "step": 1})], later)
    assert _ts(later[0]) == int(T) + 10


def test_events_encoded_from_many_threads_never_share_a_timestamp():
    e = LineEncoder(precision="ms")
    outs: list[list[str]] = [[] for _ in range(4)]

    def work(k: int) -> None:
        for i in range(250):
            e.encode([_span(f"{k:04x}{i:012x}")], outs[k])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    times = [_ts(x) for out in outs for x in out]
    assert len(times) == len(set(times)) == 1000


def test_event_memory_is_bounded():
    times = _EventTimes(1, cap=100)
    for i in range(1000):
        times.place("spans ", _span(f"{i:016x}"), ("trace_id", "span_id"))
    for g in (times._taken, times._moved, times._skip):
        assert len(g.new) <= 100 and len(g.old) <= 100


# --- which metric attributes are tags -----------------------------------------------------


def test_metric_attributes_are_tags_within_the_policy():
    tags = {"name": "q", "run": "r", "zone": "eu", "a.b": "1", "user.id": "u7", "long": "x" * 300}
    out, _ = enc(
        [Sample("metrics", T, tags, {"value": 1.0}), Sample("cpu", T, tags, {"value": 1.0})],
        attribute_tags=AttributeTags(deny=("user.*",), max_tags=1),
    )
    # "a.b" is the first allowed key in sorted order; the rest become string fields (in
    # the record's order).
    assert out[0] == (
        f'metrics,a.b=1,name=q,run=r zone="eu",user.id="u7",long="{"x" * 300}",value=1.0 '
        "1700000000500000000"
    )
    assert out[1].startswith(f"cpu,a.b=1,long={'x' * 300},name=q,run=r,user.id=u7,zone=eu ")


def test_metric_attribute_allow_list():
    out, _ = enc(
        [Sample("ml", T, {"name": "ml.loss", "split": "val", "host.id": "h1"}, {"value": 0.5})],
        attribute_tags=AttributeTags(allow=("split",)),
    )
    assert out == ['ml,name=ml.loss,split=val host.id="h1",value=0.5 1700000000500000000']
