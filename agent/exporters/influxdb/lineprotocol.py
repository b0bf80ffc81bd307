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

import math
import numbers
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import orjson

from wattspan.collectors.base import Sample

#: Multiplier from Sample.ts (seconds) to the integer timestamp of each precision.
PRECISIONS: dict[str, int] = {"ns": 1_000_000_000, "us": 1_000_000, "ms": 1_000, "s": 1}

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
    ``precision`` is one of :data:`PRECISIONS`; timestamps are truncated to it.
    """

    def __init__(
        self,
        *,
        precision: str = "ns",
        global_tags: Mapping[str, str] | None = None,
        field_tags: Collection[str] = (),
        cache_size: int = 50_000,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}")
        self.precision = precision
        self._mult = PRECISIONS[precision]
        self._global = {str(k): str(v) for k, v in (global_tags or {}).items()}
        self._field_tags = frozenset(field_tags)
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
        for k, v in tags.items():
            k = str(k)
            v = "" if v is None else str(v)
            if k in self._field_tags:
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
        mult = self._mult
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
                if ts != last_ts:
                    try:
                        ts_int = int(ts * mult)
                        last_ts = ts
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
        mult = self._mult
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
            if ts != last_ts:
                # Samples of one collector pass share a timestamp: format it once.
                try:
                    ts_text = f" {int(ts * mult)}"
                except (ValueError, OverflowError, TypeError):  # NaN/inf/None timestamp
                    dropped_points += 1
                    continue
                last_ts = ts
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
