"""Incremental window state of the result stage: count, sum, avg, min and max over integer
group keys.

The result stage gets, task by task, the pane partials of windows that span task boundaries
and must finish those windows in order. Recomputing a window from all its panes costs window
length x groups; here each (pane, group) partial is touched a bounded number of times:

* :class:`PaneRing` holds the buffered partials in pane order, in one contiguous array with a
  moving start (appends and evictions are slices, lookups by pane binary searches);
* the aggregates of the last window emitted are kept per group (the *state*), and the next
  windows follow by adding the partials of the panes that enter and subtracting those that
  leave (subtract-on-evict). All windows of a step at once: the +/- updates are scattered
  into a dense (window x group) matrix over the groups the step touches, and a running sum
  down the window axis turns it into every window's aggregates;
* group keys fold into order-preserving int64 codes (:class:`KeyCoder`, whose ranges grow as
  keys appear), so a matrix row in code order is a window's result rows in key order and the
  output columns are whole-array gathers.

Min and max cannot subtract what leaves: :class:`~.extrema.SlidingExtrema` slides them over
the pane axis by van Herk / Gil-Werman blocks over the same step's groups, at a cost of the
panes entering plus the result rows as well (its docstring has the details).

Float sums drift when values are added and later subtracted, so with float sums the state
is rebuilt from the ring (one window's partials) every few window lengths, and at the next
step when a group's sum has cancelled (large values left, small ones stay): a window's error
stays about that of summing the partials of one step's windows, as prefix-sum differences
over the buffer had it. Counts and integer sums are exact and never rebuilt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .extrema import SlidingExtrema, Spec
from .kernels import Partials, sum_dtype
from .query import Plan

_LIMIT = 1 << 62  # codes stay below this
# A step's (window x group) matrix stays below this many cells (more windows, more steps).
_CELLS = 1 << 22
# Wider than this, running sums go row by row (contiguous adds beat a strided cumsum).
_ROWWISE = 64
_ZERO = np.zeros(1, np.int64)
# Windows per step at least (at most a window length more, so the groups a step's matrix
# spans stay about those of one window).
_MIN_STEP = 64
# ... and without group keys or float sums (no group churn to bound, no drift to check) this
# many: a step's fixed cost (a few dozen numpy calls) is then spread over many windows.
_FLAT_STEP = 4096
# With float sums the state is rebuilt from its window's panes after this many windows (at
# least four window lengths): a window's sum then carries the rounding of a few windows'
# partials added and subtracted, not of the whole stream's.
_REBASE = 256
# ... and sooner when a group's running sum has cancelled: the |partials| it took in since
# the rebuild exceed this many times |sum| (its rounding error is then beyond ~1e-13).
_DRIFT = 1024.0
# Code spaces up to this size map codes to matrix columns through a lookup table.
_DENSE = 1 << 22


_SUPPORTS: dict[int, bool] = {}


def supports(plan: Plan) -> bool:
    """Whether :class:`IncrementalWindows` computes the plan's windows (every aggregate,
    over integer or boolean keys)."""
    got = _SUPPORTS.get(plan.qid)
    if got is None:
        got = codable(plan.key_dtypes)
        if len(_SUPPORTS) > 4096:  # a bool per compiled plan, kept bounded
            _SUPPORTS.clear()
        _SUPPORTS[plan.qid] = got
    return got


def for_plan(plan: Plan) -> IncrementalWindows:
    win = plan.window
    needs = plan.needs
    vd = plan.value_dtypes
    ext = {("min", c): vd[c] for c in needs.mins} | {("max", c): vd[c] for c in needs.maxs}
    return IncrementalWindows(
        win.w, win.s, plan.key_dtypes, {c: vd[c] for c in needs.sums}, ext, plan.key_ranges
    )


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """``np.unique(a)`` by a sort (numpy 2's hash-based unique is ~100x slower on wide int64
    codes; with ``return_inverse`` it sorts anyway)."""
    if len(a) < 2:
        return a.copy()
    s = np.sort(a)
    keep = np.empty(len(s), bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def codable(dtypes: Sequence[np.dtype]) -> bool:
    """Whether keys of these dtypes fold into :class:`KeyCoder` codes (integers, booleans)."""
    return all(np.dtype(d).kind in "iub" and np.dtype(d) != np.dtype(np.uint64) for d in dtypes)


class KeyCoder:
    """Order-preserving codes of integer key tuples: ``code = ((k0 - lo0) * span1 + (k1 -
    lo1)) * span2 + ...``. Ranges start at the keys seen and widen with headroom, so a stream
    whose ids grow re-codes its state a logarithmic number of times."""

    def __init__(
        self,
        dtypes: Sequence[np.dtype],
        known: Sequence[tuple[int, int] | None] | None = None,
    ) -> None:
        self.dtypes = [np.dtype(d) for d in dtypes]
        # A key's (min, max) known in advance (a join table's ranks): never scanned, and the
        # coder starts out holding it.
        self.known = list(known) if known is not None else [None] * len(self.dtypes)
        self.lo: list[int] = [r[0] if r else 0 for r in self.known]
        self.span: list[int] = [r[1] - r[0] + 1 if r else 0 for r in self.known]  # 0: none yet
        ranges = [r for r in self.known if r is not None]
        self.all_known = ranges if len(ranges) == len(self.known) else None

    def covers(self, keys: Sequence[Any]) -> tuple[bool, list[tuple[int, int]]]:
        """Whether the ranges hold ``keys``, and each key's (min, max) (the known range for
        a key that has one: a task's keys lie in it)."""
        if self.all_known is not None:  # held from the start; a widened coder holds more
            return True, self.all_known
        ext = [
            r if r is not None else (int(k.min()), int(k.max()))
            for k, r in zip(keys, self.known, strict=True)
        ]
        ok = all(
            s and lo <= a and b < lo + s
            for (a, b), lo, s in zip(ext, self.lo, self.span, strict=True)
        )
        return ok, ext

    def widened(self, ext: list[tuple[int, int]]) -> KeyCoder | None:
        """A coder whose ranges also hold ``ext``; ``None`` if no int64 code fits them."""
        for room in (True, False):
            new = KeyCoder(self.dtypes, self.known)
            total = 1
            for j, (a, b) in enumerate(ext):
                if self.known[j] is not None:  # never grows: no room to leave
                    total *= new.span[j]
                    continue
                if self.span[j]:
                    a, b = min(a, self.lo[j]), max(b, self.lo[j] + self.span[j] - 1)
                n = b - a + 1
                lo, span = a, n
                if room:
                    if self.span[j] and a < self.lo[j]:
                        lo = a - n // 2  # grew downwards: room below too
                    span = 2 * n
                info = np.iinfo(self.dtypes[j]) if self.dtypes[j].kind != "b" else None
                dmin, dmax = (info.min, info.max) if info is not None else (0, 1)
                lo = max(lo, dmin)
                span = min(max(span, b - lo + 1), dmax - lo + 1)
                new.lo[j], new.span[j] = lo, span
                total *= span
            if total < _LIMIT:
                return new
        return None

    @property
    def radix(self) -> int:
        """How many codes there are (product of the spans)."""
        out = 1
        for sp in self.span:
            out *= max(sp, 1)
        return out

    def encode(self, keys: Sequence[Any], n: int) -> np.ndarray:
        code: np.ndarray | None = None
        for k, lo, span in zip(keys, self.lo, self.span, strict=True):
            kk = k.astype(np.int64)  # a copy: ours to change in place
            if lo:
                kk -= lo
            if code is None:  # the first key is the code so far
                code = kk
            else:
                code *= span
                code += kk
        return code if code is not None else np.zeros(n, np.int64)

    def decode(self, codes: np.ndarray) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        rem = codes
        for d, lo, span in zip(
            reversed(self.dtypes), reversed(self.lo), reversed(self.span), strict=True
        ):
            rem, r = np.divmod(rem, span)
            out.append((r + lo).astype(d))
        return out[::-1]


class PaneRing:
    """Buffered partials in pane order: ``pane``, group ``code``, ``count``, ``sums`` and the
    mins and maxs (``ext``, by ``("min" | "max", column)``)."""

    def __init__(
        self, sum_dtypes: dict[str, np.dtype], ext_dtypes: dict[Spec, np.dtype] | None = None
    ) -> None:
        self.sum_dtypes = sum_dtypes
        self.ext_dtypes = ext_dtypes or {}
        self.start = self.end = 0
        self.pane = np.empty(0, np.int64)
        self.code = np.empty(0, np.int64)
        self.count = np.empty(0, np.int64)
        self.sums = {c: np.empty(0, d) for c, d in sum_dtypes.items()}
        self.ext = {sp: np.empty(0, d) for sp, d in self.ext_dtypes.items()}

    def __len__(self) -> int:
        return self.end - self.start

    def _arrays(self) -> list[np.ndarray]:
        return [self.pane, self.code, self.count, *self.sums.values(), *self.ext.values()]

    def append(
        self,
        pane: np.ndarray,
        code: np.ndarray,
        count: np.ndarray,
        sums: dict[str, np.ndarray],
        ext: dict[Spec, np.ndarray] | None = None,
    ) -> None:
        n = len(pane)
        if self.end + n > len(self.pane):
            live = len(self)
            if live + n > len(self.pane) // 2:  # keep half free: amortised O(1) appends
                cap = max(2 * (live + n), 1024)
                olds = self._arrays()
                self.pane, self.code, self.count = (np.empty(cap, a.dtype) for a in olds[:3])
                self.sums = {c: np.empty(cap, d) for c, d in self.sum_dtypes.items()}
                self.ext = {sp: np.empty(cap, d) for sp, d in self.ext_dtypes.items()}
                for new, old in zip(self._arrays(), olds, strict=True):
                    new[:live] = old[self.start : self.end]
            else:  # enough room once the evicted head is gone
                for a in self._arrays():
                    a[:live] = a[self.start : self.end].copy()
            self.start, self.end = 0, live
        e = self.end
        self.pane[e : e + n] = pane
        self.code[e : e + n] = code
        self.count[e : e + n] = count
        for c, v in sums.items():
            self.sums[c][e : e + n] = v
        for sp, v in (ext or {}).items():
            self.ext[sp][e : e + n] = v
        self.end = e + n

    def find(self, pane: int) -> int:
        """Position of the first live entry with a pane ``>= pane``."""
        return self.start + int(np.searchsorted(self.pane[self.start : self.end], pane))

    def find_all(self, *panes: int) -> list[int]:
        """:meth:`find` of several panes in one search."""
        got = np.searchsorted(self.pane[self.start : self.end], panes)
        return (got + self.start).tolist()

    def drop_below(self, pane: int) -> None:
        if self.start < self.end and self.pane[self.start] >= pane:
            return  # nothing to drop, as in most tasks: no search
        self.start = self.find(pane)

    def recode(self, old: KeyCoder, new: KeyCoder) -> None:
        sl = slice(self.start, self.end)
        self.code[sl] = new.encode(old.decode(self.code[sl]), len(self))

    def last_pane(self) -> int | None:
        return int(self.pane[self.end - 1]) if len(self) else None


class IncrementalWindows:
    """Window aggregates (count, sums, mins, maxs) from buffered pane partials, window after
    window. ``ext_dtypes``: the min/max columns' dtypes by ``("min" | "max", column)``."""

    def __init__(
        self,
        w: int,
        s: int,
        key_dtypes: Sequence[np.dtype],
        value_dtypes: dict[str, Any],
        ext_dtypes: dict[Spec, Any] | None = None,
        key_ranges: Sequence[tuple[int, int] | None] | None = None,
    ) -> None:
        self.w, self.s = w, s
        self.coder = KeyCoder(key_dtypes, key_ranges)
        self.nkeys = len(key_dtypes)
        sdt = {c: sum_dtype(d) for c, d in value_dtypes.items()}
        self.sum_dtypes = sdt
        edt = {sp: np.dtype(d) for sp, d in (ext_dtypes or {}).items()}
        self.ring = PaneRing(sdt, edt)
        self.ext = SlidingExtrema(w, s, edt) if edt else None
        self.span_w = -(-w // s)  # windows a pane belongs to, at most
        # Floating and complex sums drift as panes are added and taken away: rebuilt.
        self.float_cols = [c for c, d in sdt.items() if d.kind in "fc"]
        self.float_sums = bool(self.float_cols)
        self.rebase = max(4 * self.span_w, _REBASE)
        flat = not self.nkeys and not self.float_sums
        self.step_len = max(self.span_w, _FLAT_STEP if flat else _MIN_STEP)
        # The state: aggregates per group code (ascending) of window ``st_k``.
        self.st_k: int | None = None
        self.st_from = 0  # the window it was last rebuilt at
        self.st_code = np.empty(0, np.int64)
        self.st_count = np.empty(0, np.int64)
        self.st_sums: dict[str, np.ndarray] = {}
        # Per float column and state group: sum of |partials| added since the rebuild. Far
        # above |sum|, the running sum has cancelled: rebuild before the next step.
        self.st_mag: dict[str, np.ndarray] = {}
        self.st_dirty = False
        self._work: dict[str, np.ndarray] = {}
        self._pos: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ring)

    def add(self, part: Partials) -> bool:
        """Buffer a task's boundary partials; ``False`` if its keys fit no int64 code (the
        caller then falls back to recomputing windows)."""
        pane, keys = part.index, part.keys
        sums = part.sums
        count = part.count
        mm = {sp: (part.mins if sp[0] == "min" else part.maxs)[sp[1]] for sp in self.ring.ext}
        if self.w < self.s:  # hopping windows with gaps: drop panes no window holds
            keep = np.flatnonzero(pane % self.s < self.w)
            if len(keep) < len(pane):
                pane, count = pane[keep], count[keep]
                keys = [k[keep] for k in keys]
                sums = {c: v[keep] for c, v in sums.items()}
                mm = {sp: v[keep] for sp, v in mm.items()}
        if len(pane) == 0:
            return True
        if self.nkeys:
            ok, ext = self.coder.covers(keys)
            if not ok:
                new = self.coder.widened(ext)
                if new is None:
                    return False
                self.ring.recode(self.coder, new)
                was = self.coder

                def recode(c: np.ndarray) -> np.ndarray:
                    return new.encode(was.decode(c), len(c))

                if len(self.st_code):
                    self.st_code = recode(self.st_code)
                if self.ext is not None:
                    self.ext.recode(recode)
                self.coder = new
        code = self.coder.encode(keys, len(pane))
        self.ring.append(pane, code, count, sums, mm)
        return True

    def prune(self, next_window: int) -> None:
        """Drop buffered panes that no window from ``next_window`` on holds, but those of
        the state's window when it is the one before: they leave the windows after it."""
        pane = next_window * self.s
        if self.st_k is not None and self.st_k == next_window - 1 and len(self.st_code):
            pane = self.st_k * self.s
        else:  # the windows up to next_window came from elsewhere: the state is stale
            self.st_k = None
            if self.ext is not None:
                self.ext.reset()
        self.ring.drop_below(pane)

    def last_pane(self) -> int | None:
        return self.ring.last_pane()

    def to_partials(self) -> Partials:
        """Everything buffered, as pane partials with decoded keys."""
        r = self.ring
        sl = slice(r.start, r.end)
        code = r.code[sl]
        return Partials(
            r.pane[sl].copy(),
            self.coder.decode(code) if self.nkeys else [],
            r.count[sl].copy(),
            {c: v[sl].copy() for c, v in r.sums.items()},
            {c: v[sl].copy() for (f, c), v in r.ext.items() if f == "min"},
            {c: v[sl].copy() for (f, c), v in r.ext.items() if f == "max"},
        )

    def windows(self, k_a: int, k_b: int) -> list[Partials]:
        """Result rows of windows ``k_a..k_b`` that hold rows, in (window, key) order;
        needs every pane of those windows buffered."""
        if self.w == 1 and self.s == 1 and self.ext is None:
            got = self._tumbling(k_a, k_b)
            if got is not None:
                return got
        out: list[Partials] = []
        k = k_a
        ring = self.ring
        w, s = self.w, self.s
        while k <= k_b and len(ring):
            rebuild = self.st_k != k - 1 or not len(self.st_code)
            if not rebuild and self.float_sums:
                rebuild = self.st_dirty or k - self.st_from >= self.rebase
            if rebuild:
                # Skip windows without rows: the first buffered pane at or after window k's
                # start opens the next window worth computing.
                i = ring.find(k * s)
                if i >= ring.end:
                    break
                p = int(ring.pane[i])
                k = max(k, -((w - 1 - p) // s))
                if k > k_b:
                    break
                self._rebuild(k)
            k_end = min(k_b, k + self.step_len - 1)
            rows, k_end = self._step(k, k_end, first_is_state=not rebuild)
            out.append(rows)
            k = k_end + 1
        return [p for p in out if len(p)]

    def _tumbling(self, k_a: int, k_b: int) -> list[Partials] | None:
        """Tumbling windows: window k is pane k, and nothing carries from one to the next,
        so each is its panes' partials summed per group (no running state to add to and
        subtract from: YSB's windows, each spanning some 30 tasks). None where (window,
        group) cells fit no int64."""
        ring = self.ring
        a, b = ring.find_all(k_a, k_b + 1)
        if a >= b:
            return []
        radix = self.coder.radix if self.nkeys else 1
        cells = (k_b - k_a + 1) * radix
        if cells >= _LIMIT:
            return None
        cell = ring.pane[a:b] - k_a
        if radix > 1:
            cell *= radix
            cell += ring.code[a:b]
        dense = cells <= max(4 * (b - a), 1 << 16)  # a (window, group) table, else a sort
        index, inv = (None, cell) if dense else np.unique(cell, return_inverse=True)
        size = cells if index is None else len(index)
        count = np.zeros(size, np.int64)
        np.add.at(count, inv, ring.count[a:b])
        sums = {}
        for c, d in self.sum_dtypes.items():
            sums[c] = np.zeros(size, d)
            np.add.at(sums[c], inv, ring.sums[c][a:b])
        if index is None:  # the table's cells that hold rows
            index = np.flatnonzero(count)
            count = count[index]
            sums = {c: v[index] for c, v in sums.items()}
        k, g = np.divmod(index, radix)
        return [Partials(k + k_a, self.coder.decode(g) if self.nkeys else [], count, sums)]

    def _scratch(self, name: str, n: int, dtype: Any) -> np.ndarray:
        """A zeroed work array of ``n`` items, reused across steps (no fresh pages)."""
        buf = self._work.get(name)
        if buf is None or len(buf) < n:
            buf = np.zeros(max(n, 2 * len(buf) if buf is not None else n), dtype)
            self._work[name] = buf
            return buf[:n]
        out = buf[:n]
        out.fill(0)
        return out

    def _positions(self, u: np.ndarray, *codes: np.ndarray) -> list[np.ndarray]:
        """Where each of ``codes`` sits in ``u`` (sorted, holding them all)."""
        if not self.nkeys:
            return [np.zeros(len(c), np.int64) for c in codes]
        radix = self.coder.radix
        if radix > _DENSE:
            return [np.searchsorted(u, c) for c in codes]
        # A small code space: a lookup table beats binary searches by far.
        tab = self._pos
        if tab is None or len(tab) < radix:
            tab = self._pos = np.empty(radix, np.int64)
        tab[u] = np.arange(len(u))
        return [tab.take(c) for c in codes]

    def _exact_row(self, out: np.ndarray, c: str, k: int, u: np.ndarray) -> None:
        """``out[j]`` := sum of column ``c`` over window ``k``'s partials of group ``u[j]``."""
        ring = self.ring
        a, b = ring.find(k * self.s), ring.find(k * self.s + self.w)
        (pos,) = self._positions(u, ring.code[a:b])
        out.fill(0)
        np.add.at(out, pos, ring.sums[c][a:b])

    def _rebuild(self, k: int) -> None:
        """The state := window ``k`` aggregated from its buffered panes."""
        ring = self.ring
        a, b = ring.find(k * self.s), ring.find(k * self.s + self.w)
        code = ring.code[a:b]
        u, inv = np.unique(code, return_inverse=True)
        cnt = np.zeros(len(u), np.int64)
        np.add.at(cnt, inv, ring.count[a:b])
        self.st_code, self.st_count = u, cnt
        self.st_sums = {}
        for c, d in self.sum_dtypes.items():
            acc = np.zeros(len(u), d)
            np.add.at(acc, inv, ring.sums[c][a:b])
            self.st_sums[c] = acc
        for c in self.float_cols:
            mag = np.zeros(len(u))
            np.add.at(mag, inv, np.abs(ring.sums[c][a:b]))
            self.st_mag[c] = mag
        self.st_dirty = False
        self.st_k = self.st_from = k

    def _step(self, k: int, k_end: int, first_is_state: bool) -> tuple[Partials, int]:
        """Windows ``k..k_end`` from the state of window ``kb0`` (``k - 1`` when the state
        carries over, else ``k`` itself, just rebuilt); with the last window done (fewer
        when the matrix would be too large)."""
        ring = self.ring
        w, s = self.w, self.s
        kb0 = k - 1 if first_is_state else k
        r0 = 1 if first_is_state else 0
        # Entries entering windows kb0+1..k_end: panes [kb0*s + w, k_end*s + w); leaving
        # (last window kb0..k_end-1): panes [kb0*s, k_end*s).
        ea, eb, la, lb = ring.find_all(kb0 * s + w, k_end * s + w, kb0 * s, k_end * s)
        if not self.nkeys:
            u = _ZERO  # one group, code 0
        elif eb > ea:
            u = sorted_unique(np.concatenate([self.st_code, ring.code[ea:eb]]))
        else:
            u = self.st_code
        nu = len(u)
        rows = k_end - kb0 + 1
        # Min/max fold every pane of the step into a (pane x group) matrix: s per window.
        row_cells = nu * (s if self.ext is not None else 1)
        if rows * row_cells > _CELLS and rows > r0 + 1:
            # Too wide: fewer windows this step (u stays a superset of the groups touched).
            k_end = kb0 + max(r0, _CELLS // max(row_cells, 1))
            rows = k_end - kb0 + 1
            eb, lb = ring.find(k_end * s + w), ring.find(k_end * s)
        # Flat (window row, group column) cell of each entering and leaving entry.
        e_idx = -((w - 1 - ring.pane[ea:eb]) // s) - kb0
        l_idx = ring.pane[la:lb] // s + (1 - kb0)
        if self.nkeys:
            pb, pe, pl = self._positions(u, self.st_code, ring.code[ea:eb], ring.code[la:lb])
            e_idx *= nu
            e_idx += pe
            l_idx *= nu
            l_idx += pl
        else:
            pb = slice(0, len(self.st_code))  # the one group, when the state holds it
            pe = np.zeros(eb - ea, np.int64)

        def matrix(name: str, base: np.ndarray, vals: np.ndarray, dtype: Any) -> np.ndarray:
            m = self._scratch(name, rows * nu, dtype).reshape(rows, nu)
            flat = m.reshape(-1)
            flat[pb] = base
            np.add.at(flat, e_idx, vals[ea:eb])
            np.subtract.at(flat, l_idx, vals[la:lb])
            if nu >= _ROWWISE:
                for r in range(1, rows):
                    np.add(m[r - 1], m[r], out=m[r])
            elif rows > 1:
                np.cumsum(m, axis=0, out=m)
            return m

        mc = matrix("", self.st_count, ring.count, np.int64)
        ms = {c: matrix(c, self.st_sums[c], ring.sums[c], d) for c, d in self.sum_dtypes.items()}
        mags = {}
        for c in self.float_cols:
            mag = np.zeros(nu)
            mag[pb] = self.st_mag[c]
            np.add.at(mag, pe, np.abs(ring.sums[c][ea:eb]))
            mags[c] = mag
            # A window whose |sum| is far below what its group's running sum carried has
            # cancelled (large partials left): sum those windows' partials afresh.
            bad = np.abs(ms[c]) * _DRIFT < mag
            # An inf or NaN that left a window leaves inf - inf behind: recompute those too.
            bad |= ~np.isfinite(ms[c])
            bad &= mc > 0
            for r in np.flatnonzero(bad.any(axis=1)).tolist():
                self._exact_row(ms[c][r], c, kb0 + r, u)
                self.st_dirty = True
        last = mc[rows - 1]
        keep = np.flatnonzero(last > 0)
        self.st_code, self.st_count = u[keep], last[keep]
        self.st_sums = {c: m[rows - 1][keep] for c, m in ms.items()}
        for c, mag in mags.items():
            self.st_mag[c] = mag = mag[keep]
            st = self.st_sums[c]
            if bool((mag > _DRIFT * np.abs(st)).any()) or not bool(np.isfinite(st).all()):
                self.st_dirty = True
        self.st_k = k_end
        mx: dict[Spec, np.ndarray] = {}
        if self.ext is not None:
            cols = self._ext_cols(u)
            mx = self.ext.step(ring, cols, u, kb0 + r0, k_end)
        # Output: every (window, group) with rows, row-major = window then key order.
        body = mc[r0:]
        nrow = rows - r0
        flat = np.flatnonzero(body > 0)
        cuts = np.searchsorted(flat, np.arange(0, (nrow + 1) * nu, nu, dtype=np.int64))
        per_row = np.diff(cuts)
        ks = np.repeat(np.arange(kb0 + r0, k_end + 1, dtype=np.int64), per_row)
        keys: list[np.ndarray] = []
        if self.nkeys:
            if nu >= _ROWWISE:  # a few wide rows: subtract each row's offset in place
                col = np.empty(len(flat), np.int64)
                for r in range(nrow):
                    a, b = cuts[r], cuts[r + 1]
                    np.subtract(flat[a:b], r * nu, out=col[a:b])
            else:
                col = flat % nu
            keys = [k_.take(col) for k_ in self.coder.decode(u)]
        rows_out = Partials(
            ks,
            keys,
            body.reshape(-1).take(flat),
            {c: m[r0:].reshape(-1).take(flat) for c, m in ms.items()},
            {c: m.reshape(-1).take(flat) for (f, c), m in mx.items() if f == "min"},
            {c: m.reshape(-1).take(flat) for (f, c), m in mx.items() if f == "max"},
        )
        return rows_out, k_end

    def _ext_cols(self, u: np.ndarray) -> Callable[[int, int], np.ndarray] | None:
        """Columns in ``u`` of ring entries ``[a, b)``, for :class:`SlidingExtrema`."""
        ring = self.ring
        if not self.nkeys:
            return None  # one group, column 0

        def cols(a: int, b: int) -> np.ndarray:
            (pos,) = self._positions(u, ring.code[a:b])
            return pos

        return cols
