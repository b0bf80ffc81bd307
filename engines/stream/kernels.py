"""Aggregation kernels, written against an array namespace ``xp`` (numpy or CuPy).

Two steps, both vectorised (no per-row or per-window Python):

1. :func:`pane_partials`: rows -> one partial aggregate (count, sums, mins, maxs) per
   (pane, group). Panes and group keys are folded into one mixed-radix integer code so the
   grouping is a ``bincount``/``ufunc.at`` over a dense range (no sort) whenever the codes
   are compact, which they are for the benchmark queries; otherwise it falls back to
   ``unique`` (a sort). Rows arrive in time order, so the pane range of a task is known
   from its first and last row. Without group keys a pane is a run of consecutive rows,
   and its partials are segment reductions (``ufunc.reduceat``) instead of scatters.
2. :func:`windows_from_partials`: pane partials -> window results. Each window is a range
   of panes, so over the partials sorted by (group, pane) a window of any length is a
   difference of prefix sums (count, sum) or one sparse-table lookup (min, max): a
   ``RANGE 3600 SLIDE 1`` window costs what a tumbling one does.

:func:`scalar_partials` is a deliberately scalar (one Python step per row) reference of
step 1: the slow processor kind of the scheduler tests, and a cross-check of the fast one.
"""

from __future__ import annotations

import time as _time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backend import scatter

_LIMIT = 1 << 62  # mixed-radix codes stay below this (int64)
_INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True)
class Needs:
    """Which partial states the query's aggregates need, per input column."""

    sums: tuple[str, ...] = ()
    mins: tuple[str, ...] = ()
    maxs: tuple[str, ...] = ()


@dataclass
class Partials:
    """Partial aggregates, one row per (index, group), sorted by (index, keys).

    ``index`` is a pane id (task partials) or a window id (window results).
    """

    index: Any
    keys: list[Any]
    count: Any
    sums: dict[str, Any] = field(default_factory=dict)
    mins: dict[str, Any] = field(default_factory=dict)
    maxs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.index)

    def take(self, sel: Any) -> Partials:
        return Partials(
            self.index[sel],
            [k[sel] for k in self.keys],
            self.count[sel],
            {c: v[sel] for c, v in self.sums.items()},
            {c: v[sel] for c, v in self.mins.items()},
            {c: v[sel] for c, v in self.maxs.items()},
        )

    def map(self, fn: Any) -> Partials:
        """The same partials with ``fn`` applied to every array (e.g. to the host)."""
        return Partials(
            fn(self.index),
            [fn(k) for k in self.keys],
            fn(self.count),
            {c: fn(v) for c, v in self.sums.items()},
            {c: fn(v) for c, v in self.mins.items()},
            {c: fn(v) for c, v in self.maxs.items()},
        )

    @staticmethod
    def concat(parts: Sequence[Partials], xp: Any = np) -> Partials:
        if len(parts) == 1:
            return parts[0]
        p0 = parts[0]
        return Partials(
            xp.concatenate([p.index for p in parts]),
            [xp.concatenate([p.keys[j] for p in parts]) for j in range(len(p0.keys))],
            xp.concatenate([p.count for p in parts]),
            {c: xp.concatenate([p.sums[c] for p in parts]) for c in p0.sums},
            {c: xp.concatenate([p.mins[c] for p in parts]) for c in p0.mins},
            {c: xp.concatenate([p.maxs[c] for p in parts]) for c in p0.maxs},
        )


_SUM_DTYPES = {"f": np.dtype(np.float64), "c": np.dtype(np.complex128), "u": np.dtype(np.uint64)}


def sum_dtype(dtype: np.dtype) -> np.dtype:
    """The accumulator of a sum: float64 for floating columns, complex128 for complex ones,
    uint64 for unsigned integers (an int64 one wrapped uint64 values past 2**63), int64 for
    signed integers and booleans. Integer sums wrap past 64 bits, as numpy's do (and
    Spark's outside ANSI mode): docs/stream.md says so."""
    return _SUM_DTYPES.get(np.dtype(dtype).kind, np.dtype(np.int64))


def extreme(dtype: np.dtype, low: bool) -> Any:
    """The identity of min (``low=False``: the largest value) or max for ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return -np.inf if low else np.inf
    if dtype.kind == "b":
        return not low
    info = np.iinfo(dtype)
    return info.min if low else info.max


def empty_partials(
    key_dtypes: Sequence[np.dtype], value_dtypes: dict[str, np.dtype], needs: Needs, xp: Any = np
) -> Partials:
    return Partials(
        xp.empty(0, np.int64),
        [xp.empty(0, d) for d in key_dtypes],
        xp.empty(0, np.int64),
        {c: xp.empty(0, sum_dtype(value_dtypes[c])) for c in needs.sums},
        {c: xp.empty(0, value_dtypes[c]) for c in needs.mins},
        {c: xp.empty(0, value_dtypes[c]) for c in needs.maxs},
    )


def _is_int(a: Any) -> bool:
    return a.dtype.kind in "iub"


def pane_partials(
    time: Any,
    keys: Sequence[Any],
    values: dict[str, Any],
    pane: int,
    needs: Needs,
    xp: Any = np,
    ranges: Sequence[tuple[int, int] | None] | None = None,
) -> Partials:
    """Partials per (pane, group) of rows with non-decreasing ``time``.

    ``ranges[j]`` is a known ``(min, max)`` of integer key ``j`` (e.g. from a join table),
    which saves a pass over the key.
    """
    n = len(time)
    if n == 0:
        return empty_partials(
            [k.dtype for k in keys], {c: v.dtype for c, v in values.items()}, needs, xp
        )
    p = time // pane if pane > 1 else time
    if not keys and xp is np:  # (CuPy's ufuncs may lack reduceat)
        return _runs(p, values, needs, xp)
    p0, p1 = int(p[0]), int(p[-1])
    radix = p1 - p0 + 1
    code = p - p0 if p0 else p
    if code.dtype != np.int64:
        code = code.astype(np.int64)
    spans: list[tuple[int, int]] = []  # per key: (offset, span) of an arithmetic decode
    decodable = True
    for j, k in enumerate(keys):
        span = 0
        if _is_int(k):
            known = ranges[j] if ranges is not None else None
            kmin, kmax = known if known is not None else (int(k.min()), int(k.max()))
            span, kk = kmax - kmin + 1, k
        # Not an integer, a range too wide to offset, or uint64 values past int64's: ranks.
        if not span or span >= _LIMIT or kmax > _INT64_MAX:
            (kk, span), kmin, decodable = _ranks(k, xp), 0, False
        if radix * span >= _LIMIT:
            # Compress the codes so far into their ranks: order and equality survive.
            _, code = xp.unique(code, return_inverse=True)
            radix = int(code.max()) + 1
            decodable = False
            if radix * span >= _LIMIT:  # the key's own range is too wide beside them: ranks
                (kk, span), kmin = _ranks(k, xp), 0
        # In place on the product (our own array): a pass and a temporary fewer per key. A
        # narrower signed ``kk`` (an int32 rank) is widened by the add itself.
        code = code * span
        code += kk if kk.dtype.kind == "i" else kk.astype(np.int64)
        if kmin:
            code -= kmin
        radix *= span
        spans.append((kmin, span))
    if decodable and radix <= max(4 * n, 1 << 16):
        return _dense(code, radix, p0, spans, keys, values, needs, xp)
    return _sorted(code, p, keys, values, needs, xp)


def _runs(p: Any, values: dict[str, Any], needs: Needs, xp: Any) -> Partials:
    """No group keys: panes are sorted runs of rows, each partial a segment reduction
    (no scatter, whose updates of one pane would serialise on the same cell)."""
    n = len(p)
    edge = xp.flatnonzero(p[1:] != p[:-1]) + 1
    starts = xp.concatenate([xp.zeros(1, edge.dtype), edge])
    count = xp.diff(xp.concatenate([starts, xp.asarray([n], dtype=starts.dtype)]))
    out = Partials(p[starts].astype(np.int64), [], count.astype(np.int64))
    for c in needs.sums:
        v = values[c]
        out.sums[c] = xp.add.reduceat(v, starts, dtype=sum_dtype(v.dtype))
    for c in needs.mins:
        out.mins[c] = xp.minimum.reduceat(values[c], starts)
    for c in needs.maxs:
        out.maxs[c] = xp.maximum.reduceat(values[c], starts)
    return out


def _dense(code, radix, p0, spans, keys, values, needs, xp) -> Partials:  # type: ignore[no-untyped-def]
    cnt = xp.bincount(code, minlength=radix)
    ids = xp.flatnonzero(cnt)
    out = Partials(index=None, keys=[], count=cnt[ids])
    rem = ids
    decoded: list[Any] = []
    for (kmin, span), k in zip(reversed(spans), reversed(keys), strict=True):
        rem, r = xp.divmod(rem, span)
        decoded.append((r + kmin).astype(k.dtype))
    out.keys = decoded[::-1]
    out.index = rem + p0
    _fill(out, code, radix, ids, values, needs, xp)
    return out


def _sorted(code, p, keys, values, needs, xp) -> Partials:  # type: ignore[no-untyped-def]
    uniq, first, inv = xp.unique(code, return_index=True, return_inverse=True)
    out = Partials(
        index=p[first].astype(np.int64),
        keys=[k[first] for k in keys],
        count=xp.bincount(inv, minlength=len(uniq)),
    )
    _fill(out, inv, len(uniq), None, values, needs, xp)
    return out


def _fill(
    out: Partials, code: Any, size: int, ids: Any, values: dict[str, Any], needs: Needs, xp: Any
) -> None:
    for c in needs.sums:
        v = values[c]
        dt = sum_dtype(v.dtype)
        acc = xp.zeros(size, dt)
        # Same dtype on both sides: ufunc.at's fast path (a casting one is 20x slower).
        scatter(xp, "add", acc, code, v if v.dtype == dt else v.astype(dt))
        out.sums[c] = acc if ids is None else acc[ids]
    for c in needs.mins:
        v = values[c]
        acc = xp.full(size, extreme(v.dtype, low=False), v.dtype)
        scatter(xp, "minimum", acc, code, v)
        out.mins[c] = acc if ids is None else acc[ids]
    for c in needs.maxs:
        v = values[c]
        acc = xp.full(size, extreme(v.dtype, low=True), v.dtype)
        scatter(xp, "maximum", acc, code, v)
        out.maxs[c] = acc if ids is None else acc[ids]


def scalar_partials(
    time: Any,
    keys: Sequence[Any],
    values: dict[str, Any],
    pane: int,
    needs: Needs,
    xp: Any = np,
    ranges: Sequence[tuple[int, int] | None] | None = None,
) -> Partials:
    """The same result as :func:`pane_partials`, one Python step per row (slow on purpose)."""
    acc: dict[tuple[Any, ...], list[Any]] = {}
    tl = time.tolist()
    kl = [k.tolist() for k in keys]
    sl = [values[c].tolist() for c in needs.sums]
    ml = [values[c].tolist() for c in needs.mins]
    xl = [values[c].tolist() for c in needs.maxs]
    ns, nm = len(sl), len(ml)
    for i, t in enumerate(tl):
        if not i & 127:
            # Hand the GIL over now and then: a fast kind's threads in the same process
            # would otherwise wait out the interpreter's switch interval at every numpy call.
            _time.sleep(0)
        g = (t // pane, *(k[i] for k in kl))
        a = acc.get(g)
        if a is None:
            acc[g] = [1, *(s[i] for s in sl), *(m[i] for m in ml), *(x[i] for x in xl)]
            continue
        a[0] += 1
        for j, s in enumerate(sl):
            a[1 + j] += s[i]
        for j, m in enumerate(ml):
            if m[i] < a[1 + ns + j]:
                a[1 + ns + j] = m[i]
        for j, x in enumerate(xl):
            if x[i] > a[1 + ns + nm + j]:
                a[1 + ns + nm + j] = x[i]
    if not acc:
        return empty_partials(
            [k.dtype for k in keys], {c: v.dtype for c, v in values.items()}, needs, xp
        )
    items = sorted(acc.items())
    gs = [g for g, _ in items]
    vs = [v for _, v in items]
    return Partials(
        np.array([g[0] for g in gs], np.int64),
        [np.array([g[1 + j] for g in gs], keys[j].dtype) for j in range(len(keys))],
        np.array([v[0] for v in vs], np.int64),
        {
            c: np.array([v[1 + j] for v in vs], sum_dtype(values[c].dtype))
            for j, c in enumerate(needs.sums)
        },
        {
            c: np.array([v[1 + ns + j] for v in vs], values[c].dtype)
            for j, c in enumerate(needs.mins)
        },
        {
            c: np.array([v[1 + ns + nm + j] for v in vs], values[c].dtype)
            for j, c in enumerate(needs.maxs)
        },
    )


def _ranks(k: Any, xp: Any) -> tuple[Any, int]:
    """Each value's rank among the distinct values of ``k`` (int64, order kept), and how many
    distinct values there are (at least 1): a code for keys no offset range fits."""
    uniq, kk = xp.unique(k, return_inverse=True)
    return kk.astype(np.int64, copy=False), max(len(uniq), 1)


def group_codes(keys: Sequence[Any], xp: Any = np) -> Any:
    """Order-preserving integer codes of the key tuples (equal tuples, equal codes)."""
    if not keys:
        return None
    code = None
    radix = 1
    for k in keys:
        kmin, kmax = (int(k.min()), int(k.max())) if _is_int(k) and len(k) else (0, _LIMIT)
        if kmax - kmin + 1 < _LIMIT and kmax <= _INT64_MAX:
            span, kk = kmax - kmin + 1, k.astype(np.int64) - kmin
        else:
            kk, span = _ranks(k, xp)
        if code is None:
            code, radix = kk, span
            continue
        if radix * span >= _LIMIT:
            _, code = xp.unique(code, return_inverse=True)
            radix = int(code.max()) + 1 if len(code) else 1
            if radix * span >= _LIMIT:  # the key's own range is too wide beside them: ranks
                kk, span = _ranks(k, xp)
        code = code * span + kk
        radix *= span
    return code


def windows_from_partials(
    part: Partials,
    w: int,
    s: int,
    k_lo: int,
    k_hi: int,
    needs: Needs,
    xp: Any = np,
    unique_entries: bool = False,
) -> Partials:
    """Window results for windows ``k_lo..k_hi`` (each the panes ``[k*s, k*s + w)``) from pane
    partials in any order, duplicates of a (pane, group) allowed; sorted by (window, keys).

    ``unique_entries``: ``part`` is sorted by (pane, keys) with no duplicates (one task's
    partials), which lets tumbling windows be a slice.
    """
    if len(part) == 0 or k_hi < k_lo:
        return part.take(slice(0, 0))
    if w == 1 and s == 1 and unique_entries:
        lo, hi = xp.searchsorted(part.index, xp.asarray([k_lo, k_hi + 1]))
        return part.take(slice(int(lo), int(hi)))
    p = part.index
    pmin, pmax = int(p.min()), int(p.max())
    pspan = pmax - pmin + 1
    if not part.keys and pspan <= 8 * len(part) + 4096:
        return _windows_dense(part, pmin, pspan, w, s, k_lo, k_hi, needs, xp, unique_entries)
    g = group_codes(part.keys, xp)
    if g is None:
        c = p - pmin
    else:
        _, g = xp.unique(g, return_inverse=True)  # dense 0..G-1
        c = g.astype(np.int64) * pspan + (p - pmin)
    order = xp.argsort(c)
    c = c[order]
    ps = p[order]
    gs = g[order] if g is not None else None
    # Window interval [a, b] of each entry, clipped to the windows asked for.
    a = xp.maximum(-((w - 1 - ps) // s), k_lo)
    b = xp.minimum(ps // s, k_hi)
    ok = a <= b
    if not bool(ok.all()):
        a, b = a[ok], b[ok]
        ge = gs[ok] if gs is not None else None
    else:
        ge = gs
    if len(a) == 0:
        return part.take(slice(0, 0))
    # Union of the intervals of a group: b never decreases within a group (sorted by pane).
    start = xp.ones(len(a), dtype=bool)
    if ge is not None:
        start[1:] = (ge[1:] != ge[:-1]) | (a[1:] > b[:-1] + 1)
    else:
        start[1:] = a[1:] > b[:-1] + 1
    first = xp.flatnonzero(start)
    last = xp.concatenate([first[1:] - 1, xp.asarray([len(a) - 1])])
    ra, rb = a[first], b[last]
    lens = rb - ra + 1
    total = int(lens.sum())
    offs = xp.cumsum(lens) - lens
    ok_k = xp.repeat(ra - offs, lens) + xp.arange(total)
    og = xp.repeat(ge[first], lens) if ge is not None else None
    base = og * pspan if og is not None else 0
    lo = xp.searchsorted(c, base + xp.clip(ok_k * s - pmin, 0, pspan), side="left")
    hi = xp.searchsorted(c, base + xp.clip(ok_k * s + w - pmin, 0, pspan), side="left")
    # Output order: by window, then by keys (group codes preserve key order).
    if og is not None:
        gmax = int(og.max()) + 1
        out_order = xp.argsort((ok_k - k_lo) * gmax + og)
    else:
        out_order = xp.argsort(ok_k, kind="stable")
    lo, hi, ok_k = lo[out_order], hi[out_order], ok_k[out_order]
    res = Partials(
        ok_k.astype(np.int64),
        [k[order][lo] for k in part.keys],
        _range_sum(part.count[order], lo, hi, xp),
    )
    for col in needs.sums:
        res.sums[col] = _range_sum(part.sums[col][order], lo, hi, xp)
    for col in needs.mins:
        res.mins[col] = _range_extreme(part.mins[col][order], lo, hi, xp, "minimum")
    for col in needs.maxs:
        res.maxs[col] = _range_extreme(part.maxs[col][order], lo, hi, xp, "maximum")
    return res


def _windows_dense(
    part: Partials,
    pmin: int,
    pspan: int,
    w: int,
    s: int,
    k_lo: int,
    k_hi: int,
    needs: Needs,
    xp: Any,
    unique: bool,
) -> Partials:
    """No group keys and a compact pane range: windows over a dense array of panes (empty
    panes hold the identity), so merging duplicates and sliding are a few passes."""
    bins = part.index - pmin
    k_a = max(k_lo, -((w - 1 - pmin) // s))
    k_b = min(k_hi, (pmin + pspan - 1) // s)
    if k_b < k_a:
        return part.take(slice(0, 0))
    ks = xp.arange(k_a, k_b + 1, dtype=np.int64)
    lo = xp.minimum(xp.maximum(ks * s - pmin, 0), pspan)
    hi = xp.minimum(xp.maximum(ks * s + w - pmin, 0), pspan)

    def put(acc: Any, fn: str, v: Any) -> Any:
        if unique:  # one entry per pane: a plain assignment
            acc[bins] = v
        else:
            scatter(xp, fn, acc, bins, v)
        return acc

    cnt = put(xp.zeros(pspan, np.int64), "add", part.count)
    count = _range_sum(cnt, lo, hi, xp)
    nz = xp.flatnonzero(count > 0)
    lo, hi = lo[nz], hi[nz]
    res = Partials(ks[nz], [], count[nz])
    for c in needs.sums:
        v = part.sums[c]
        res.sums[c] = _range_sum(put(xp.zeros(pspan, v.dtype), "add", v), lo, hi, xp)
    for c in needs.mins:
        v = part.mins[c]
        acc = put(xp.full(pspan, extreme(v.dtype, low=False), v.dtype), "minimum", v)
        res.mins[c] = _range_extreme(acc, lo, hi, xp, "minimum")
    for c in needs.maxs:
        v = part.maxs[c]
        acc = put(xp.full(pspan, extreme(v.dtype, low=True), v.dtype), "maximum", v)
        res.maxs[c] = _range_extreme(acc, lo, hi, xp, "maximum")
    return res


def _range_sum(v: Any, lo: Any, hi: Any, xp: Any) -> Any:
    """Sums of ``v[lo:hi]`` per query, as prefix-sum differences."""

    def prefix(a: Any) -> Any:
        return xp.concatenate([xp.zeros(1, a.dtype), xp.cumsum(a, dtype=a.dtype)])

    finite = xp.isfinite(v) if v.dtype.kind in "fc" else None
    if finite is None or bool(finite.all()):
        csum = prefix(v)
        return csum[hi] - csum[lo]
    # An inf or NaN would stay in every later prefix (inf - inf is NaN): sum the finite
    # values so, and give a range holding non-finite ones what summing it gives.
    csum = prefix(xp.where(finite, v, 0))
    out = csum[hi] - csum[lo]

    def count(mask: Any) -> Any:
        c = prefix(mask.astype(np.int64))
        return c[hi] - c[lo]

    pos, neg, nan = count(v == np.inf), count(v == -np.inf), count(xp.isnan(v))
    out = xp.where(pos > 0, np.inf, out)
    out = xp.where(neg > 0, -np.inf, out)
    return xp.where((nan > 0) | ((pos > 0) & (neg > 0)), np.nan, out)


def _range_extreme(v: Any, lo: Any, hi: Any, xp: Any, fn: str) -> Any:
    """min/max of ``v[lo:hi]`` per query, from a sparse table (O(1) per query)."""
    if len(lo) == 0:  # (every window asked for was empty)
        return v[:0].copy()
    length = hi - lo
    maxlen = int(length.max())
    op = getattr(xp, fn)
    levels = [v]
    j = 1
    while (1 << j) <= maxlen:
        prev = levels[-1]
        half = 1 << (j - 1)
        levels.append(op(prev[:-half], prev[half:]))
        j += 1
    if len(levels) == 1:
        return v[lo]
    lvl = xp.floor(xp.log2(length.astype(np.float64))).astype(np.int64)
    out = xp.empty(len(lo), v.dtype)
    for j in range(len(levels)):
        sel = xp.flatnonzero(lvl == j)
        if len(sel) == 0:
            continue
        tab = levels[j]
        out[sel] = op(tab[lo[sel]], tab[hi[sel] - (1 << j)])
    return out
