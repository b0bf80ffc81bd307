"""Stateless row operators (selection, projection, computed columns, stream-table join) and
the aggregate specs of the windowed aggregation.

Each operator runs on a task's columns (``dict[str, array]``) with an array namespace ``xp``
(numpy, or CuPy on the GPU worker) and keeps only the columns a later step needs, so a
selection compresses as few columns as possible.

Join semantics: an inner equi-join of the stream with a static table on one key column.
Rows whose key is not in the table are dropped. Integer keys in a compact range use a dense
lookup array (one gather per row: YSB's ``ad_id -> campaign_id``); other keys a sorted
search.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import StreamError
from .expr import Expr, check_columns

Cols = dict[str, Any]

# A dense lookup array may be this many times larger than the table (or this many slots).
_DENSE_FACTOR = 8
_DENSE_MIN = 1 << 20


class StaticTable:
    """A static table for stream-table joins: a unique key column and value columns.

    ``StaticTable("ad_id", {"ad_id": ads, "campaign_id": campaigns})``.
    """

    def __init__(self, key: str, columns: Mapping[str, Any]) -> None:
        if key not in columns:
            raise StreamError(f"table key {key!r} is not one of its columns")
        cols = {k: np.asarray(v) for k, v in columns.items()}
        n = len(cols[key])
        for k, v in cols.items():
            if v.ndim != 1 or len(v) != n:
                raise StreamError(f"table column {k!r} must be 1-d with {n} rows")
        keys = cols[key]
        if len(np.unique(keys)) != n:
            raise StreamError(f"table key {key!r} has duplicate values")
        self.key = key
        self.columns = cols
        self.value_names = [k for k in cols if k != key]
        self._dense = False
        self._lut: np.ndarray | None = None
        self.key_max = 0
        if n and np.issubdtype(keys.dtype, np.integer):
            kmin, kmax = int(keys.min()), int(keys.max())
            if kmin >= 0 and kmax < max(_DENSE_FACTOR * n, _DENSE_MIN):
                lut = np.full(kmax + 2, -1, dtype=np.int32 if n < 2**31 else np.int64)
                lut[keys] = np.arange(n)
                self._lut, self._dense, self.key_max = lut, True, kmax
        order = np.argsort(keys, kind="stable")
        self._sorted_keys = keys[order]
        self._order = order
        # A value column used only as a group key joins as its rank among the table's distinct
        # values (0..d-1): the aggregation then groups over a dense range whatever the values
        # (YSB's 100 campaign ids scattered over [0, 1e6)) and decodes at the end.
        self.uniques: dict[str, np.ndarray] = {}
        self._ranks: dict[str, np.ndarray] = {}
        for k in self.value_names:
            uniq, rank = np.unique(cols[k], return_inverse=True)
            self.uniques[k] = uniq
            self._ranks[k] = rank.astype(np.int32 if len(uniq) < 2**31 else np.int64)
        # With a dense lookup, each column's ranks composed with it: key -> rank in one
        # gather, -1 for a key not in the table (a join taking only ranked columns, as YSB's
        # does, then costs one gather per row instead of two).
        self._lut_ranks: dict[str, np.ndarray] = {}
        if self._lut is not None:
            for k, r in self._ranks.items():
                self._lut_ranks[k] = np.where(self._lut >= 0, r[self._lut], -1).astype(r.dtype)
        self._device: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.columns[self.key])

    def on(self, xp: Any) -> dict[str, Any]:
        """The table's arrays in namespace ``xp`` (copied to the device once)."""
        got = self._device.get(id(xp))
        if got is None:
            got = {k: xp.asarray(v) for k, v in self.columns.items()}
            got["__lut__"] = xp.asarray(self._lut) if self._lut is not None else None
            got["__skeys__"] = xp.asarray(self._sorted_keys)
            got["__order__"] = xp.asarray(self._order)
            for k, r in self._ranks.items():
                got["__rank__" + k] = xp.asarray(r)
            for k, r in self._lut_ranks.items():
                got["__lutrank__" + k] = xp.asarray(r)
            self._device[id(xp)] = got
        return got

    def lookup(self, keys: Any, xp: Any, lut_name: str = "__lut__") -> Any:
        """Row index into the table for each key, ``-1`` where the key is absent
        (``lut_name="__lutrank__" + column``, dense tables only: that column's rank)."""
        arrs = self.on(xp)
        if self._dense:
            lut = arrs[lut_name]
            # Keys above the table's range clip onto the sentinel slot (-1) at the end
            # (CuPy's take has no clip mode: clip the keys there).
            if keys.dtype.kind == "u" and keys.dtype.itemsize == 8:
                # uint64 keys past int64's range would wrap negative in the index cast and
                # clip onto slot 0: park them on the sentinel slot first.
                keys = xp.minimum(keys, len(lut) - 1).astype(np.int64)
            if xp is np:
                idx = np.take(lut, keys, mode="clip")
            else:
                idx = lut[xp.clip(keys, 0, len(lut) - 1)]
            if keys.dtype.kind == "i" and len(keys) and int(keys.min()) < 0:
                idx = xp.where(keys < 0, -1, idx)
            return idx
        skeys = arrs["__skeys__"]
        if len(skeys) == 0:
            return xp.full(len(keys), -1, dtype=np.int64)
        pos = xp.searchsorted(skeys, keys)
        pos = xp.minimum(pos, len(skeys) - 1)
        hit = skeys[pos] == keys
        return xp.where(hit, arrs["__order__"][pos], -1)


@dataclass
class Step:
    """One row operator; ``keep`` (set at compile time) lists the columns to carry on."""

    keep: tuple[str, ...] = field(default=(), init=False)

    def reads(self) -> set[str]:
        raise NotImplementedError

    def writes(self) -> set[str]:
        """Columns the step sets (computed, or taken from a table)."""
        return set()

    def label(self) -> str:
        """The step as a message names it."""
        raise NotImplementedError

    def output(self, available: Sequence[str]) -> list[str]:
        raise NotImplementedError

    def apply(self, cols: Cols, xp: Any) -> Cols:
        raise NotImplementedError


def _assigned(exprs: Mapping[str, Expr]) -> list[str]:
    """``name=expression`` of computed columns, as a step's label shows them."""
    return [f"{k}={e!r}" for k, e in exprs.items()]


def _full(value: Any, n: int, xp: Any) -> Any:
    return xp.full(n, value)


def _length(cols: Cols) -> int:
    for v in cols.values():
        return len(v)
    return 0


@dataclass
class Where(Step):
    predicate: Expr

    def reads(self) -> set[str]:
        return self.predicate.columns()

    def label(self) -> str:
        return f"where {self.predicate!r}"

    def output(self, available: Sequence[str]) -> list[str]:
        check_columns(self.predicate, available, "where")
        return list(available)

    def apply(self, cols: Cols, xp: Any) -> Cols:
        mask = self.predicate.eval(cols, xp)
        if not hasattr(mask, "dtype") or mask.dtype != np.bool_:
            raise StreamError(f"where {self.predicate!r} is not a boolean condition")
        # Positions then gathers: one pass over the mask, and far faster than boolean
        # indexing of every column (which rescans the mask and mispredicts on random ones).
        idx = xp.flatnonzero(mask)
        return {k: xp.take(cols[k], idx) for k in self.keep}


@dataclass
class Derive(Step):
    """Add computed columns (``derive(segment=col("position") // 5280)``), keeping the rest."""

    exprs: dict[str, Expr]

    def reads(self) -> set[str]:
        return set().union(*(e.columns() for e in self.exprs.values()))

    def writes(self) -> set[str]:
        return set(self.exprs)

    def label(self) -> str:
        return "derive " + ", ".join(_assigned(self.exprs))

    def output(self, available: Sequence[str]) -> list[str]:
        for name, e in self.exprs.items():
            check_columns(e, available, f"column {name!r}")
        return [*available, *(n for n in self.exprs if n not in available)]

    def apply(self, cols: Cols, xp: Any) -> Cols:
        n = _length(cols)
        out = dict(cols)
        for name, e in self.exprs.items():
            if name in self.keep:
                v = e.eval(cols, xp)
                out[name] = v if hasattr(v, "shape") and v.shape else _full(v, n, xp)
        return {k: out[k] for k in self.keep}


@dataclass
class Select(Step):
    """Projection: keep ``names`` and add computed ``exprs``; every other column goes."""

    names: tuple[str, ...]
    exprs: dict[str, Expr]

    def reads(self) -> set[str]:
        return set(self.names).union(*(e.columns() for e in self.exprs.values()))

    def writes(self) -> set[str]:
        return set(self.exprs)

    def label(self) -> str:
        return "select " + ", ".join([*self.names, *_assigned(self.exprs)])

    def output(self, available: Sequence[str]) -> list[str]:
        for n in self.names:
            if n not in available:
                raise StreamError(
                    f"select: unknown column {n!r} (available: {', '.join(available)})"
                )
        for name, e in self.exprs.items():
            check_columns(e, available, f"column {name!r}")
        return [*self.names, *(n for n in self.exprs if n not in self.names)]

    def apply(self, cols: Cols, xp: Any) -> Cols:
        n = _length(cols)
        out: Cols = {}
        for name in self.keep:
            if name in self.exprs:
                v = self.exprs[name].eval(cols, xp)
                out[name] = v if hasattr(v, "shape") and v.shape else _full(v, n, xp)
            else:
                out[name] = cols[name]
        return out


@dataclass
class Join(Step):
    """``as_codes``: the taken columns that join as dense ranks (see :class:`StaticTable`)."""

    table: StaticTable
    on: str
    take: tuple[str, ...]
    as_codes: frozenset[str] = frozenset()
    # Derived by :meth:`set_codes` once ``keep`` and the codes are known: the taken columns
    # still needed, and the one ranked column a dense table gathers straight from the key
    # when it is all the join takes (YSB's), instead of working both out again per task.
    _taken: tuple[str, ...] = field(default=(), init=False, repr=False)
    _direct: str | None = field(default=None, init=False, repr=False)

    def set_codes(self, codes: frozenset[str]) -> None:
        """Set ``as_codes`` (at compile time, after ``keep``) and what follows from it."""
        self.as_codes = codes
        self._taken = tuple(c for c in self.take if c in self.keep)
        one = self._taken[0] if len(self._taken) == 1 else None
        self._direct = one if one in codes and self.table._dense else None

    def reads(self) -> set[str]:
        return {self.on}

    def writes(self) -> set[str]:
        return set(self.take)

    def label(self) -> str:
        key = self.table.columns[self.table.key]
        return f"join on {self.on!r} (table key {self.table.key!r}, {key.dtype})"

    def output(self, available: Sequence[str]) -> list[str]:
        if self.on not in available:
            raise StreamError(
                f"join: unknown column {self.on!r} (available: {', '.join(available)})"
            )
        for c in self.take:
            if c not in self.table.value_names:
                raise StreamError(f"join: table has no column {c!r}")
            if c in available:
                raise StreamError(f"join: column {c!r} exists in the stream already")
        return [*available, *self.take]

    def apply(self, cols: Cols, xp: Any) -> Cols:
        # The direct column's rank is gathered straight from the key (the lookup composed
        # with the ranks) and stands for the row index below. NumPy only: CuPy's take has no
        # clip mode, and lookup's other branch is fine.
        direct = self._direct if xp is np else None
        idx = self.table.lookup(cols[self.on], xp, "__lutrank__" + direct if direct else "__lut__")
        # Inner join: compress only when some key missed (YSB's never do).
        if len(idx) and int(idx.min()) < 0:
            hit = xp.flatnonzero(idx >= 0)
            idx = xp.take(idx, hit)
            cols = {k: xp.take(v, hit) for k, v in cols.items() if k in self.keep}
        out = {k: cols[k] for k in self.keep if k not in self.take}
        if direct:
            out[direct] = idx
            return out
        arrs = self.table.on(xp)
        for c in self._taken:
            out[c] = arrs["__rank__" + c if c in self.as_codes else c][idx]
        return out


AGG_FUNCS = ("count", "sum", "avg", "min", "max")


@dataclass(frozen=True)
class Agg:
    """One aggregate: ``Agg.count()``, ``Agg.sum("cpu")``, ``Agg.avg("speed")``, ..."""

    fn: str
    column: str | None = None

    def __post_init__(self) -> None:
        if self.fn not in AGG_FUNCS:
            raise StreamError(f"unknown aggregate {self.fn!r} (one of {', '.join(AGG_FUNCS)})")
        if self.fn != "count" and not self.column:
            raise StreamError(f"aggregate {self.fn} needs a column")

    @staticmethod
    def count() -> Agg:
        return Agg("count")

    @staticmethod
    def sum(column: str) -> Agg:
        return Agg("sum", column)

    @staticmethod
    def avg(column: str) -> Agg:
        return Agg("avg", column)

    @staticmethod
    def min(column: str) -> Agg:
        return Agg("min", column)

    @staticmethod
    def max(column: str) -> Agg:
        return Agg("max", column)

    @staticmethod
    def parse(spec: Agg | str | tuple[str, str] | tuple[str]) -> Agg:
        """``Agg``, ``"count"``, ``("sum", "cpu")``."""
        if isinstance(spec, Agg):
            return spec
        if isinstance(spec, str):
            return Agg(spec)
        if isinstance(spec, tuple) and 1 <= len(spec) <= 2:
            return Agg(*spec)
        raise StreamError(f"bad aggregate {spec!r}: use Agg.sum('col') or ('sum', 'col')")


def compile_steps(steps: Sequence[Step], final: Sequence[str]) -> None:
    """Set each step's ``keep``: the columns some later step (or the window) still reads."""
    needed = set(final)
    for st in reversed(steps):
        st.keep = tuple(sorted(needed))
        needed = (needed - st.writes()) | st.reads()


def run_steps(steps: Sequence[Step], cols: Cols, xp: Any) -> Cols:
    for st in steps:
        cols = st.apply(cols, xp)
    return cols
