"""Sliding-window min and max per group over the pane axis, for the result stage's
incremental state (:mod:`.incremental`).

Min and max cannot subtract the panes that leave a window, so windows follow van Herk /
Gil-Werman: the pane axis is cut into blocks of ``w`` panes (the window length), aligned at
multiples of ``w``. A window ``[a, a + w)`` not aligned to a block spans the end of block
``a // w`` and the start of the next, so its extremum is ``op(suffix[a], prefix[a + w -
1])``: the suffix extremum of ``a``'s block from ``a`` on, and the prefix extremum of the
next block up to the window's last pane. An aligned window is a whole block, whose extremum
both terms are, so the one formula serves every window. Prefixes and suffixes are
``ufunc.accumulate`` runs over dense (pane x group) matrices reshaped into blocks, so a
window costs O(1) per group whatever ``w``.

Carried across steps (the stage finishes a few windows per task):

* the prefix row of the block the last folded pane is in: the panes entering the next step
  continue it, so each pane is folded into a prefix once;
* the suffixes of the block the next window starts in, computed once per block when a
  window first needs them (every pane of a block is in once its first window that needs it
  is final), from the buffered panes.

A step then costs its entering panes x groups plus, once per block of ``w`` panes, the
block's suffixes: ~ panes x groups over the stream, not window length x groups per window.
The state is at most a block (one window length) of suffix rows and one prefix row.

Windows that do not overlap (``w <= s``: tumbling, or hopping with gaps) share no pane: each
entry is scattered into its one window directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .kernels import extreme

Spec = tuple[str, str]  # ("min" | "max", column)
# Column positions in the step's group codes ``u`` of the ring entries ``[a, b)``; ``None``
# without group keys (one column).
Cols = Callable[[int, int], np.ndarray] | None


def _acc(op: Any, m: np.ndarray, axis: int = 0) -> None:
    if m.shape[axis] > 1:
        op.accumulate(m, axis=axis, out=m)


def _columns(codes: np.ndarray, u: np.ndarray) -> np.ndarray | None:
    """Per code of ``u``, its column in ``codes`` (sorted), ``len(codes)`` where absent;
    ``None`` when ``codes`` is ``u`` (the group set did not change: the common case)."""
    if codes is u or (len(codes) == len(u) and bool((codes == u).all())):
        return None
    if len(codes) == 0:
        return np.zeros(len(u), np.int64)
    pos = np.searchsorted(codes, u)
    hit = pos < len(codes)
    hit[hit] = codes[pos[hit]] == u[hit]
    pos[~hit] = len(codes)
    return pos


class SlidingExtrema:
    """Min/max of every (window, group) from buffered pane partials, window after window."""

    def __init__(self, w: int, s: int, dtypes: dict[Spec, np.dtype]) -> None:
        self.w, self.s = w, s
        self.dtypes = {sp: np.dtype(d) for sp, d in dtypes.items()}
        self.ops = {sp: np.minimum if sp[0] == "min" else np.maximum for sp in dtypes}
        # The identity of each: the largest value for min, the smallest for max.
        self.ident = {sp: extreme(d, low=sp[0] == "max") for sp, d in self.dtypes.items()}
        self.reset()

    def reset(self) -> None:
        """Forget the carried state (the windows up to the next one came from elsewhere)."""
        self.k: int | None = None  # the last window computed: panes < k*s + w are folded
        self.pre_codes = np.empty(0, np.int64)
        self.pre: dict[Spec, np.ndarray] = {}  # prefix row of the block holding pane hi - 1
        self.suf_block: int | None = None
        self.suf_codes = np.empty(0, np.int64)
        # Suffix rows of block ``suf_block`` (w x codes, and an identity column at the end).
        self.suf: dict[Spec, np.ndarray] = {}

    def cells(self) -> int:
        """Values held across steps (the state's size)."""
        return sum(a.size for a in self.suf.values()) + sum(a.size for a in self.pre.values())

    def recode(self, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        """The group codes re-coded by ``fn`` (order-preserving: rows stay sorted)."""
        if len(self.pre_codes):
            self.pre_codes = fn(self.pre_codes)
        if len(self.suf_codes):
            self.suf_codes = fn(self.suf_codes)

    def _dense(
        self, ring: Any, cols: Cols, lo: int, hi: int, a: int, b: int, nu: int
    ) -> dict[Spec, np.ndarray]:
        """(pane ``lo..hi`` x group) matrices of the ring entries ``[a, b)`` (all in panes
        ``[lo, hi)``), the identity where a group has no partial; a pane split between
        tasks holds two entries, hence ``ufunc.at``."""
        idx = ring.pane[a:b] - lo
        if cols is not None:
            idx *= nu
            idx += cols(a, b)
        out = {}
        for sp, d in self.dtypes.items():
            m = np.full((hi - lo) * nu, self.ident[sp], d)
            self.ops[sp].at(m, idx, ring.ext[sp][a:b])
            out[sp] = m.reshape(hi - lo, nu)
        return out

    def step(self, ring: Any, cols: Cols, u: np.ndarray, k0: int, k1: int) -> dict[Spec, Any]:
        """(window ``k0..k1`` x group ``u``) matrices; every pane of those windows buffered,
        and every group with a partial in them in ``u``."""
        w, s = self.w, self.s
        nu = len(u)
        rows = k1 - k0 + 1
        if w <= s:  # no pane in two windows
            self.k = k1
            a, b = ring.find_all(k0 * s, k1 * s + w)
            win = ring.pane[a:b] // s - k0
            if cols is not None:
                win *= nu
                win += cols(a, b)
            out = {}
            for sp, d in self.dtypes.items():
                m = np.full(rows * nu, self.ident[sp], d)
                self.ops[sp].at(m, win, ring.ext[sp][a:b])
                out[sp] = m.reshape(rows, nu)
            return out
        carry = self.k == k0 - 1
        if not carry:
            self.reset()
        a0, p1 = k0 * s, k1 * s + w
        hi = (k0 - 1) * s + w if carry else a0  # first pane not folded into a prefix yet
        ea, eb = ring.find_all(hi, p1)
        pre = self._dense(ring, cols, hi, p1, ea, eb, nu)  # prefix extrema, once folded
        head = min(p1 - hi, (-hi % w) or w)  # rows up to the first block boundary
        nb, tail = divmod(p1 - hi - head, w)
        seeded = bool(self.pre) and hi % w != 0
        seed = _columns(self.pre_codes, u) if seeded else None
        for sp, m in pre.items():
            op = self.ops[sp]
            if seed is not None:
                row = np.append(self.pre[sp], self.ident[sp]).astype(m.dtype, copy=False)
                op(m[0], row[seed], out=m[0])
            elif seeded:
                op(m[0], self.pre[sp], out=m[0])
            _acc(op, m[:head])
            if nb:
                _acc(op, m[head : head + nb * w].reshape(nb, w, nu), axis=1)
            if tail:
                _acc(op, m[p1 - hi - tail :])
        # The next step continues the prefix of the block pane p1 - 1 is in.
        self.k = k1
        if p1 % w:
            self.pre_codes = u
            self.pre = {sp: m[-1].copy() for sp, m in pre.items()}
        else:
            self.pre_codes = np.empty(0, np.int64)
            self.pre = {}
        # Window k's last pane is row k*s + w - 1 - hi of ``pre``: rows s apart.
        e0 = a0 + w - 1 - hi
        lasts = {sp: m[e0 : e0 + (rows - 1) * s + 1 : s] for sp, m in pre.items()}
        return self._suffixes(ring, cols, u, lasts, a0, k1)

    def _suffixes(
        self,
        ring: Any,
        cols: Cols,
        u: np.ndarray,
        lasts: dict[Spec, np.ndarray],
        a0: int,
        k1: int,
    ) -> dict[Spec, np.ndarray]:
        """``op(suffix at the window's start, prefix at its last pane)`` per window ``k0..k1``
        (``a0 = k0 * s``), keeping the suffixes of the block the next window starts in. An
        aligned window is a whole block: its suffix at the start is the block's extremum,
        as is the prefix at its end, so the same formula holds."""
        w, s = self.w, self.s
        nu = len(u)
        rows = k1 - a0 // s + 1
        j_lo, j_hi = a0 // w, k1 * s // w
        old = self.suf_block == j_lo
        j_a = j_lo + 1 if old else j_lo  # first block whose suffixes are computed here
        new: dict[Spec, np.ndarray] = {}
        if j_a <= j_hi:
            lo, hi = j_a * w, (j_hi + 1) * w  # block j_hi ends by the last window's end
            # Panes before a0 only reach suffix rows before the first window: left out.
            a, b = ring.find_all(max(lo, a0), hi)
            new = self._dense(ring, cols, lo, hi, a, b, nu)
            for sp, m in new.items():
                x = m.reshape(j_hi - j_a + 1, w, nu)[:, ::-1]
                _acc(self.ops[sp], x, axis=1)
        # Windows starting in the kept block come first (starts are s apart).
        in_old = min(rows, -(-(j_a * w - a0) // s)) if old else 0
        colmap = _columns(self.suf_codes, u) if in_old else None
        out: dict[Spec, np.ndarray] = {}
        for sp, pre in lasts.items():
            op = self.ops[sp]
            res = np.empty((rows, nu), pre.dtype)
            if in_old:
                r0 = a0 - j_lo * w
                kept = self.suf[sp][r0 : r0 + (in_old - 1) * s + 1 : s]
                kept = kept[:, :nu] if colmap is None else kept[:, colmap]
                op(kept, pre[:in_old], out=res[:in_old])
            if in_old < rows:
                r0 = a0 + in_old * s - j_a * w
                op(
                    new[sp][r0 : r0 + (rows - in_old - 1) * s + 1 : s],
                    pre[in_old:],
                    out=res[in_old:],
                )
            out[sp] = res
        j_next = (k1 + 1) * s // w
        if j_next == j_hi and j_a <= j_hi:
            self.suf_block, self.suf_codes = j_hi, u
            self.suf = {}
            for sp, m in new.items():
                keep = np.empty((w, nu + 1), m.dtype)
                keep[:, :nu] = m[len(m) - w :]
                keep[:, nu] = self.ident[sp]
                self.suf[sp] = keep
        elif j_next != self.suf_block:
            self.suf_block = None
            self.suf = {}
        return out
