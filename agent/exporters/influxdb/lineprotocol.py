"""InfluxDB line protocol, encoded straight from the agent's :class:`Sample` batches.

Why our own encoder: ``influxdb_client.Point`` builds an object per point and escapes every
key on every call (about 4x slower on agent data, see ``bench/bench_influx_encode.py``). The
agent's data is highly repetitive (the same few hundred series every interval), so the
expensive part -- measurement and tag set escaping, sorting, merging the global tags -- is
done once per distinct (source, tags) and cached, as is the escaped ``key=`` of every field
key; per point only the field values and the timestamp are formatted.

Escaping follows what influxd's parser (1.x and 2.x share ``models/points.go``) really does,
verified against a real influxd by ``tests/test_influx_roundtrip.py``:

* measurement: ``,`` and space are escaped with a backslash;
* tag keys and values: ``,`` ``=`` and space are escaped with a backslash; a backslash is
  *not* doubled, because the parser only un-escapes those three characters (``a\\,b``
  written as ``a\\\\,b`` reads back exactly);
* field keys: the same plus ``"``;
* string field values: ``"`` and ``\\`` are escaped; a raw line feed is allowed inside the
  quotes and round-trips.

Not representable, and therefore changed (the table is in docs/influxdb.md):

* a line feed in a measurement, tag key/value or field key ends the line in the parser and
  no escape for it exists, so it is written as the two characters ``\\n``;
* a trailing backslash in those names would escape the following delimiter, so trailing
  backslashes are removed;
* a backslash right before ``,`` space ``=`` ``"`` in a measurement is removed (influxd
  un-escapes measurement names twice); in a field key an odd run of backslashes right before
  ``,`` ``=`` or space loses one backslash;
* influxd skips tabs and NUL bytes before a measurement and before the first field key,
  so leading tabs/NULs are removed from measurements and field keys;
* an empty tag key or value is omitted (influx has no empty tags); the key ``time`` is
  rejected by influxd as tag or field key, so such tags and fields are omitted too;
* a measurement starting with ``#`` would be read as a comment: such points are dropped.

Values: ``int`` gets the ``i`` suffix (outside int64: dropped), ``bool`` is ``true``/
``false``, ``float`` is its shortest round-trip form, NaN and +-inf cannot be written
and the field is dropped and counted; a point left without fields is dropped and counted.

Identity: influxd merges points of equal (measurement, tag set, timestamp). Metric
attributes stay tags within :class:`AttributeTags`; the points of :data:`EVENT_SOURCES`
(spans, valued metrics) get a timestamp of their own per series from :class:`_EventTimes`;
samples of node series are one per series and tick and keep theirs.

Two paths produce the same points:

* **Shapes** (the fast path). A point whose fields are all exact ``float``/``int``/``bool``
  with writable keys is one of a few hundred *shapes* per node: (source, tags, field keys,
  field types). Each shape gets a cached ``bytes`` template, ``b"cpu,cpu=3,host=h
  user_ratio=%s,...,threads=%si %s"``. For a whole chunk, the values and timestamps are
  gathered into one flat list, formatted by a single ``orjson.dumps`` call (Ryu-style
  shortest round-trip floats, in C), split at the commas and poured into the joined
  templates by one ``bytes % tuple``. Per point, Python only builds the shape key and
  extends two lists. Formatting floats one by one with ``repr`` costs about 0.4 us each, so
  the per-value path below tops out near 850k *values* per second; this one does not
  format in Python at all (``bench/bench_influx_encode.py`` measures both).
  orjson prints NaN/inf as ``null`` and refuses ints beyond 64 bits, so a chunk with a
  ``null``, a refused int or an int above int64 is redone on the per-value path. (The
  int64 check is one ``max()`` over the chunk, so a float above 9.2e18 sends its chunk
  that way too: correct, only slower.)
* **Per value** (everything else: string fields, numpy scalars, unwritable keys, the chunks
  above): the original loop, one ``repr``/escape per value.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import numbers
import re
import threading
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import orjson

from wattspan.collectors.base import Sample

#: Multiplier from Sample.ts (seconds) to the integer timestamp of each precision.
PRECISIONS: dict[str, int] = {"ns": 1_000_000_000, "us": 1_000_000, "ms": 1_000, "s": 1}
#: Nanoseconds in one timestamp unit of each precision.
UNIT_NS: dict[str, int] = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}

_MEASUREMENT_ESCAPES = str.maketrans({",": "\\,", " ": "\\ ", "\n": "\\n"})
_KEY_ESCAPES = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ ", "\n": "\\n"})
_FIELD_KEY_ESCAPES = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ ", '"': '\\"', "\n": "\\n"})
_MEASUREMENT_BACKSLASHES = re.compile(r"\\+(?=[, =\"])")
#: An odd-length run of backslashes directly before , = or space (in a field key).
_ODD_BACKSLASHES = re.compile(r"(?<!\\)((?:\\\\)*)\\(?=[,= ])")
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})
#: influxd skips these before a measurement and before the first field key, so they cannot
#: start either; we remove them from every measurement and field key for consistency.
_SKIPPED = "\t\x00"
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
#: Tag and field keys influxd refuses (400 "invalid tag key"/"invalid field name").
RESERVED_KEYS = frozenset({"time"})
#: Field value types the template path formats (exact types: numpy scalars and other
#: subclasses take the per-value path).
_SHAPE_TYPES = frozenset({float, int, bool})
#: "No timestamp formatted yet": unequal to anything, so a None timestamp is not mistaken for
#: a cached one (None cannot be written: the point is dropped and counted).
_NO_TS = object()


def escape_measurement(name: str) -> str:
    """Escape a measurement name (see module docstring for the unrepresentable cases)."""
    name = name.lstrip(_SKIPPED)
    if "\\" in name:
        # influxd un-escapes measurement names more than once, so a backslash right before
        # "," " " "=" or '"' cannot survive in any encoding: such backslashes are removed.
        name = _MEASUREMENT_BACKSLASHES.sub("", name).rstrip("\\")
    return name.translate(_MEASUREMENT_ESCAPES)


def escape_key(name: str) -> str:
    """Escape a tag key or tag value."""
    return name.translate(_KEY_ESCAPES).rstrip("\\")


def escape_field_key(name: str) -> str:
    """Escape a field key.

    The field section has its own parser rules: a backslash escapes the next byte while
    scanning, and ``\\,`` ``\\=`` ``\\ `` ``\\"`` are un-escaped. So ``"`` is escaped too,
    an odd run of backslashes right before ``,`` ``=`` or space loses one backslash (it
    cannot be represented), and leading tabs/NULs go as for measurements.
    """
    name = name.lstrip(_SKIPPED)
    if "\\" in name:
        name = _ODD_BACKSLASHES.sub(r"\1", name).rstrip("\\")
    return name.translate(_FIELD_KEY_ESCAPES)


def escape_string(value: str) -> str:
    """Escape a string field value, quotes included."""
    return '"' + value.translate(_STRING_ESCAPES) + '"'


def seconds_to_ns(ts: float) -> int:
    """Unix seconds (a float) to integer nanoseconds: the float product, truncated.

    That is what this encoder has always written, so a point sent again by a newer agent
    (a re-export, a replayed dead letter) lands on the same nanosecond and overwrites itself.
    Its 256 ns steps are finer than the 0.24 us a float carries at today's epoch. Sources
    that have exact nanoseconds (OTLP) put them in ``Sample.ts_ns`` instead. Raises
    ValueError/OverflowError for NaN/inf and TypeError for None.
    """
    return int(ts * 1e9)


def sample_ns(s: Sample) -> int:
    """``s``'s time in integer nanoseconds: ``ts_ns`` when set, else ``ts`` converted.

    Raises OverflowError outside int64 (influxd cannot store it), and what
    :func:`seconds_to_ns` raises.
    """
    ns = s.ts_ns
    ns = seconds_to_ns(s.ts) if ns is None else int(ns)
    if not _INT64_MIN <= ns <= _INT64_MAX:
        raise OverflowError("timestamp outside int64 nanoseconds")
    return ns


#: Measurements whose points are events, not samples of a series: two of them may share a
#: series and a timestamp, and influxd would merge them into one point. Each gets a
#: timestamp of its own (see :class:`_EventTimes`). The value names the fields that identify
#: one event (a span: trace and span id); empty means the whole point (tags and fields).
EVENT_SOURCES: Mapping[str, tuple[str, ...]] = {
    "spans": ("trace_id", "span_id"),
    "ml": (),
    "metrics": (),
}
#: Tag values longer than this (characters) of a metric attribute are written as fields:
#: such values (SQL text, URLs with ids) are almost always unbounded.
MAX_ATTRIBUTE_TAG_LENGTH = 256


@dataclass(frozen=True, slots=True)
class AttributeTags:
    """Which tags of the metric measurements (``ml``, ``metrics``) stay tags.

    Such points carry their OTLP attributes as tags beside the identity tags (``name``,
    ``run``). An attribute stays a tag when its key matches a pattern of ``allow``
    (``fnmatch`` globs), none of ``deny``, its value is at most
    :data:`MAX_ATTRIBUTE_TAG_LENGTH` characters, and it is among the first ``max_tags``
    such keys in sorted order; any other attribute is written as a string field of the same
    key, so it is kept but creates no series.
    """

    allow: tuple[str, ...] = ("*",)
    deny: tuple[str, ...] = ()
    max_tags: int = 16
    sources: frozenset[str] = frozenset({"ml", "metrics"})
    identity: frozenset[str] = frozenset({"name", "run"})

    def as_fields(self, tags: Mapping[str, str]) -> set[str]:
        """The keys of ``tags`` to be written as fields instead."""
        moved: set[str] = set()
        kept = 0
        for k in sorted(tags, key=str):
            if k in self.identity:
                continue
            v = "" if tags[k] is None else str(tags[k])
            if (
                kept < self.max_tags
                and len(v) <= MAX_ATTRIBUTE_TAG_LENGTH
                and any(fnmatch.fnmatchcase(k, p) for p in self.allow)
                and not any(fnmatch.fnmatchcase(k, p) for p in self.deny)
            ):
                kept += 1
            else:
                moved.add(k)
        return moved


def _digest(text: str) -> int:
    """A 64-bit hash of ``text`` that is the same in every process (``hash`` of a ``str``
    is not), so that a record encoded again after a restart gets the same timestamp."""
    raw = hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest()
    return int.from_bytes(raw, "little")


class _Generations:
    """A dict that forgets: lookups see two generations, :meth:`rotate` drops the older.
    Keys are ints (hashes), which keeps an entry near 100 bytes."""

    __slots__ = ("new", "old")

    def __init__(self) -> None:
        self.new: dict[int, int] = {}
        self.old: dict[int, int] = {}

    def get(self, key: int) -> int | None:
        v = self.new.get(key)
        return self.old.get(key) if v is None else v

    def rotate(self) -> None:
        self.old, self.new = self.new, {}


class _EventTimes:
    """Gives every event point a timestamp no other event of its series holds.

    ``place`` returns the point's timestamp in units of the precision: its own time
    (truncated) when free, else the next free unit after it. The same event encoded again
    (same series, same identity, same time: an OTLP client's retry, a re-export) gets the
    timestamp it got the first time, so it overwrites itself instead of adding a duplicate.

    At ``ns`` precision, events with an identity (spans) keep their time to the microsecond
    and take the nanoseconds within it from a hash of the identity. The stored times come
    from float seconds, which carry about 0.24 us, so little is lost, and the timestamp is
    a function of the record alone: a span re-exported after a restart, with this memory
    gone, lands on its own point again unless it had collided with another span of its
    series (odds about 1 in 1000 per pair ending in the same microsecond).

    Memory is bounded: what was placed is remembered in two generations, rotated after
    ``cap`` points or ``max_age`` seconds, so uniqueness holds among at least the last
    ``cap`` event points (or ``max_age`` seconds of them), in 100-200 bytes a point.
    Units are keyed by ``hash((series, t))``: two units sharing a 64-bit hash could only
    cost an event a needless move by one unit.
    """

    def __init__(self, unit_ns: int, *, cap: int = 16_384, max_age: float = 120.0) -> None:
        self._unit = unit_ns
        self._cap = cap
        self._max_age = max_age
        self._lock = threading.Lock()
        # hash((series, t)) -> identity hash of the event holding unit t
        self._taken = _Generations()
        # hash((series, base, identity)) -> where an event that had to move went
        self._moved = _Generations()
        # hash((series, t)) -> a unit after t worth trying next (shortcuts through bursts)
        self._skip = _Generations()
        self._born = time.monotonic()

    def place(self, series: str, s: Sample, id_keys: tuple[str, ...]) -> int:
        ns = sample_ns(s)
        fields = s.fields
        ids = [fields.get(k) for k in id_keys]
        by_id = bool(ids) and all(type(v) is str and v for v in ids)
        if by_id:
            h = _digest("\0".join(ids))  # type: ignore[arg-type]
        else:
            # The time is part of a content identity: the same values later are a new point.
            h = _digest(repr((ns // self._unit, sorted(s.tags.items()), sorted(fields.items()))))
        # Hash digits below the microsecond only where an identity makes them stable.
        base = ns - ns % 1000 + h % 1000 if self._unit == 1 and by_id else ns // self._unit
        with self._lock:
            if len(self._taken.new) >= self._cap or time.monotonic() - self._born > self._max_age:
                for g in (self._taken, self._moved, self._skip):
                    g.rotate()
                self._born = time.monotonic()
            here = hash((series, base))
            holder = self._taken.get(here)
            if holder is None or holder == h:
                self._taken.new[here] = h
                return base
            moved_key = hash((series, base, h))
            t = self._moved.get(moved_key)
            if t is None:
                t = self._free(series, base)
                if t > _INT64_MAX:
                    raise OverflowError("timestamp outside int64")
                self._taken.new[hash((series, t))] = h
            self._moved.new[moved_key] = t
            return t

    def _free(self, series: str, t: int) -> int:
        """The first unit at or after ``t`` that no event of ``series`` holds. Leaves a
        shortcut past each unit it walked over, so a burst at one time costs O(1) a point."""
        walked = []
        while True:
            k = hash((series, t))
            if self._taken.get(k) is None:
                break
            walked.append(k)
            nxt = self._skip.get(k)
            t = nxt if nxt is not None and nxt > t else t + 1
        skip = self._skip.new
        for k in walked:
            skip[k] = t + 1
        return t


@dataclass(slots=True)
class EncodeCounts:
    """What one :meth:`LineEncoder.encode` call did."""

    points: int = 0
    dropped_points: int = 0
    dropped_fields: int = 0


class _FieldKeys(dict[str, str]):
    """field key -> ``escaped_key=``; the empty string for keys that cannot be written."""

    __slots__ = ()

    def __missing__(self, key: str) -> str:
        k = str(key)
        esc = escape_field_key(k) if k not in RESERVED_KEYS else ""
        value = esc + "=" if esc else ""
        if len(self) < 100_000:
            self[key] = value
        return value


class LineEncoder:
    """Encode Samples to line protocol lines (``str``, no trailing newline).

    ``global_tags`` are added to every point (a sample's own tag of the same key wins).
    ``field_tags`` are tag keys written as string fields instead, for unbounded identifiers
    (``trace_id``...) that would explode series cardinality as tags.
    ``precision`` is one of :data:`PRECISIONS`; timestamps (integer nanoseconds:
    ``Sample.ts_ns``, else :func:`seconds_to_ns` of ``Sample.ts``) are truncated to it.
    ``attribute_tags`` decides which attributes of metric points stay tags.
    ``event_sources`` are the measurements whose points get a timestamp of their own per
    series (:data:`EVENT_SOURCES`, :class:`_EventTimes`).
    """

    def __init__(
        self,
        *,
        precision: str = "ns",
        global_tags: Mapping[str, str] | None = None,
        field_tags: Collection[str] = (),
        attribute_tags: AttributeTags | None = None,
        event_sources: Mapping[str, tuple[str, ...]] = EVENT_SOURCES,
        cache_size: int = 50_000,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}")
        self.precision = precision
        self._unit = UNIT_NS[precision]
        self._global = {str(k): str(v) for k, v in (global_tags or {}).items()}
        self._field_tags = frozenset(field_tags)
        self._attribute_tags = AttributeTags() if attribute_tags is None else attribute_tags
        self._events = dict(event_sources)
        self._event_times = _EventTimes(self._unit)
        self._cache_size = cache_size
        # (source, *tags.items()) -> (prefix "meas,k=v,... ", fields from field_tags or "")
        self._series: dict[object, tuple[str, str]] = {}
        # (source, *tags.items(), *field keys, *field types) -> template, b"" = per value
        self._shapes: dict[object, bytes] = {}
        self._fkeys = _FieldKeys()

    def _series_entry(self, source: str, tags: Mapping[str, str]) -> tuple[str, str] | None:
        meas = escape_measurement(str(source))
        if not meas or meas.startswith("#"):
            return None
        merged = dict(self._global)
        extra: list[str] = []
        policy = self._attribute_tags
        moved = policy.as_fields(tags) if source in policy.sources else ()
        for k, v in tags.items():
            k = str(k)
            v = "" if v is None else str(v)
            if k in self._field_tags or k in moved:
                merged.pop(k, None)
                fk = self._fkeys[k]
                if fk and v:
                    extra.append(fk + escape_string(v))
            else:
                merged[k] = v
        parts = [meas]
        # Sorted by key: what influxd does internally anyway, so it does less work.
        for k in sorted(merged):
            if k in RESERVED_KEYS:
                continue
            ek, ev = escape_key(k), escape_key(merged[k])
            if ek and ev:
                parts.append(ek + "=" + ev)
        return ",".join(parts) + " ", ",".join(extra)

    def encode_frames(
        self, samples: Sequence[Sample], batch_size: int
    ) -> tuple[list[tuple[bytes, int]], EncodeCounts]:
        """Encode ``samples`` into frames of at most ``batch_size`` lines each.

        A frame is ``(body, lines)``: UTF-8 line protocol, every line ending in ``\\n``
        (lone surrogates replaced), and how many points it holds. Samples keep their order.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        counts = EncodeCounts()
        frames: list[tuple[bytes, int]] = []
        for i in range(0, len(samples), batch_size):
            frame = self._encode_chunk(samples[i : i + batch_size], counts)
            if frame is not None:
                frames.append(frame)
        return frames, counts

    def encode(self, samples: Sequence[Sample], out: list[str]) -> EncodeCounts:
        """Append one line (``str``, no line feed) per encodable sample to ``out``.

        Convenience for tests and tools; the exporter uses :meth:`encode_frames`.
        """
        frames, counts = self.encode_frames(samples, max(1, len(samples)))
        for body, lines in frames:
            out.extend(line.decode() for line in split_lines(body, lines))
        return counts

    def _encode_chunk(
        self, samples: Sequence[Sample], counts: EncodeCounts
    ) -> tuple[bytes, int] | None:
        shapes = self._shapes
        values: list[object] = []  # every fast point's field values, then its timestamp
        extend, push = values.extend, values.append
        plan: list[bytes] = []  # one template per line, in order
        add = plan.append
        unit = self._unit
        events = self._events
        last_ts: object = _NO_TS
        ts_int = 0
        drops = counts.dropped_points, counts.dropped_fields
        for s in samples:
            fields = s.fields
            vals = fields.values()
            try:
                key: object = (s.source, *s.tags.items(), *fields, *map(type, vals))
                template = shapes.get(key)
            except TypeError:  # unhashable tag value
                key, template = None, None
            if template is None:
                template = self._shape(s, key)
            if template:
                ts = s.ts
                if s.source in events:
                    try:
                        ts_int = self._event_ts(s)
                    except (ValueError, OverflowError, TypeError):  # NaN/inf/None
                        template = b""
                    last_ts = _NO_TS  # ts_int is this event's own, not the batch's
                elif ts != last_ts or s.ts_ns is not None:
                    # Samples of one collector pass share a timestamp: convert it once.
                    try:
                        ts_int = sample_ns(s) // unit
                        last_ts = ts if s.ts_ns is None else _NO_TS
                    except (ValueError, OverflowError, TypeError):  # NaN/inf/None
                        template = b""
                if template:
                    extend(vals)
                    push(ts_int)
                    add(template)
                    continue
            # Per-value path for this sample; '%' doubled so the final format keeps it.
            for line in self._encode_values((s,), counts):
                add(line.encode("utf-8", "replace").replace(b"%", b"%%"))
        if not plan:
            return None
        try:
            blob = orjson.dumps(values)
        except TypeError:  # an int beyond 64 bits
            blob = b"null"
        if b"null" in blob or (values and max(values) > _INT64_MAX):  # type: ignore[type-var]
            # NaN/inf (orjson's null) or ints influx cannot take: redo the chunk per value,
            # which drops and counts exactly those fields. Rare, so simplicity wins.
            counts.dropped_points, counts.dropped_fields = drops
            lines = self._encode_values(samples, counts)
            if not lines:
                return None
            body = ("\n".join(lines) + "\n").encode("utf-8", "replace")
            counts.points += len(lines)
            return body, len(lines)
        tokens = blob[1:-1].split(b",") if values else []
        body = (b"\n".join(plan) + b"\n") % tuple(tokens)
        counts.points += len(plan)
        return body, len(plan)

    def _event_ts(self, s: Sample) -> int:
        """The timestamp (units) of an event point of the template path."""
        try:
            key: object = (s.source, *s.tags.items()) if s.tags else s.source
            entry = self._series.get(key)
        except TypeError:  # unhashable tag value
            key, entry = None, None
        if entry is None:
            entry = self._series_entry(s.source, s.tags)
            if entry is None:  # not reached: such a point has no template
                raise ValueError("unwritable measurement")
            if key is not None:
                if len(self._series) >= self._cache_size:
                    self._series.clear()
                self._series[key] = entry
        return self._event_times.place(entry[0], s, self._events[s.source])

    def _shape(self, s: Sample, key: object) -> bytes:
        """The template for ``s``'s shape, cached under ``key``; ``b""``: per-value path."""
        template = b""
        entry = self._series_entry(s.source, s.tags)
        if entry is not None and s.fields:
            prefix, extra = entry
            head = (prefix + (extra + "," if extra else "")).replace("%", "%%")
            parts = []
            for k, v in s.fields.items():
                fk = self._fkeys[k]
                t = type(v)
                if not fk or t not in _SHAPE_TYPES:
                    break
                parts.append(fk.replace("%", "%%") + ("%si" if t is int else "%s"))
            else:
                template = (head + ",".join(parts) + " %s").encode("utf-8", "replace")
        if key is not None:
            if len(self._shapes) >= self._cache_size:
                self._shapes.clear()  # bounded memory; the working set refills it quickly
            self._shapes[key] = template
        return template

    def _encode_values(self, samples: Iterable[Sample], counts: EncodeCounts) -> list[str]:
        """The per-value path: one ``str`` line per encodable sample; adds the drops to
        ``counts`` (not the points: the caller counts lines)."""
        out: list[str] = []
        series = self._series
        fkeys = self._fkeys
        unit = self._unit
        events = self._events
        dropped_points = dropped_fields = 0
        append = out.append
        # Locals: cheaper than global/builtin lookups in the per-field loop.
        lo, hi, rep, esc, flt, integer, boolean, text = (
            _INT64_MIN,
            _INT64_MAX,
            repr,
            escape_string,
            float,
            int,
            bool,
            str,
        )
        last_ts: object = _NO_TS
        ts_text = ""
        for s in samples:
            tags = s.tags
            try:
                key: object = (s.source, *tags.items()) if tags else s.source
                entry = series.get(key)
            except TypeError:  # unhashable tag value: encode without caching
                key, entry = None, None
            if entry is None:
                entry = self._series_entry(s.source, tags)
                if entry is None:
                    dropped_points += 1
                    dropped_fields += len(s.fields)
                    continue
                if key is not None:
                    if len(series) >= self._cache_size:
                        series.clear()  # bounded memory; the working set refills it quickly
                    series[key] = entry
            prefix, extra = entry
            parts = [extra] if extra else []
            for k, v in s.fields.items():
                fk = fkeys[k]
                if not fk:  # empty or reserved key
                    dropped_fields += 1
                    continue
                t = type(v)
                # Exact type checks first: the cheapest path for the common cases.
                if t is flt:
                    if v - v == 0.0:  # false for NaN and +-inf
                        parts.append(fk + rep(v))
                        continue
                elif t is integer:
                    if lo <= v <= hi:
                        parts.append(f"{fk}{v}i")
                        continue
                elif t is boolean:
                    parts.append(fk + ("true" if v else "false"))
                    continue
                elif t is text:
                    parts.append(fk + esc(v))
                    continue
                else:
                    other = _format_other(v)
                    if other is not None:
                        parts.append(fk + other)
                        continue
                dropped_fields += 1
            if not parts:
                dropped_points += 1
                continue
            ts = s.ts
            if s.source in events:
                try:
                    ts_text = f" {self._event_times.place(prefix, s, events[s.source])}"
                except (ValueError, OverflowError, TypeError):  # NaN/inf/None timestamp
                    dropped_points += 1
                    continue
                last_ts = _NO_TS
            elif ts != last_ts or s.ts_ns is not None:
                # Samples of one collector pass share a timestamp: format it once.
                try:
                    ts_text = f" {sample_ns(s) // unit}"
                except (ValueError, OverflowError, TypeError):  # NaN/inf/None timestamp
                    dropped_points += 1
                    continue
                last_ts = ts if s.ts_ns is None else _NO_TS
            append(prefix + ",".join(parts) + ts_text)
        counts.dropped_points += dropped_points
        counts.dropped_fields += dropped_fields
        return out


def _format_other(v: object) -> str | None:
    """Slow path for numpy scalars, subclasses, Decimals...; None when not writable."""
    if isinstance(v, bool) or getattr(getattr(v, "dtype", None), "kind", "") == "b":
        return "true" if v else "false"
    if isinstance(v, numbers.Integral):
        i = int(v)
        return f"{i}i" if _INT64_MIN <= i <= _INT64_MAX else None
    if isinstance(v, numbers.Real):
        f = float(v)
        return repr(f) if math.isfinite(f) else None
    if isinstance(v, str):
        return escape_string(str(v))
    return None


def split_lines(payload: bytes, expected: int | None = None) -> list[bytes]:
    """Split line protocol into lines (each without its ``\\n``).

    String field values may contain raw line feeds, so a plain split is only used when the
    number of line feeds equals ``expected`` (the number of points the encoder said it wrote);
    otherwise the lines are scanned with the parser's own rules. Used only on the rare paths
    (413 splitting, dead letters), so the scanner favours clarity over speed.
    """
    if expected is not None and payload.count(b"\n") == expected:
        lines = payload.split(b"\n")
        if lines and not lines[-1]:
            lines.pop()
        return lines
    return list(_scan_lines(payload))


def _scan_lines(buf: bytes) -> Iterable[bytes]:
    n = len(buf)
    i = 0
    start = 0
    BS, SP, NL, EQ, CM, QT = 0x5C, 0x20, 0x0A, 0x3D, 0x2C, 0x22
    while i < n:
        # Measurement and tags: a delimiter preceded by a backslash is escaped (that is the
        # rule influxd applies in this section, not "backslash escapes the next byte").
        while i < n and not (buf[i] == SP and (i == start or buf[i - 1] != BS)):
            if buf[i] == NL and (i == start or buf[i - 1] != BS):
                break
            i += 1
        if i < n and buf[i] == SP:
            i += 1
            # Fields: key=value[,key=value...]
            while i < n:
                while i < n and not (buf[i] == EQ and buf[i - 1] != BS):
                    if buf[i] == NL:
                        break
                    i += 1
                if i >= n or buf[i] == NL:
                    break
                i += 1  # '='
                if i < n and buf[i] == QT:
                    i += 1
                    while i < n and buf[i] != QT:
                        i += 2 if buf[i] == BS else 1
                    i += 1  # closing quote
                while i < n and buf[i] not in (CM, SP, NL):
                    i += 1
                if i < n and buf[i] == CM:
                    i += 1
                    continue
                break
            # Timestamp (or end of line).
            while i < n and buf[i] != NL:
                i += 1
        if i > start:
            yield buf[start:i]
        i += 1
        start = i
