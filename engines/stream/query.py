"""A fluent builder for windowed queries on columnar batches, and its compiled plan.

    q = (
        Query(YSB_SCHEMA, name="ysb")
        .where(col("event_type") == YSB_VIEW)
        .join(ads, on="ad_id", columns=["campaign_id"])
        .window(size=10_000, range_="event_time")          # tumbling: slide = size
        .group_by("campaign_id")
        .agg(count=Agg.count())
    )
    for batch in Engine(workers=2).run(q, batches):          # WindowBatch, in window order
        ...

Row operators (``where``, ``select``, ``derive``, ``join``) run in the order given, before the
window; ``having`` filters the window results (a second ``having`` is ANDed with the first, as
a second ``where`` is). ``window``, ``group_by`` and ``agg`` are given once each: a second call
is an error, not a silent replacement. Each builder call returns a new query.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .errors import StreamError
from .expr import Expr, as_expr, check_columns
from .kernels import Needs, Partials, sum_dtype
from .operators import Agg, Derive, Join, Select, StaticTable, Step, Where, compile_steps
from .schema import Schema
from .window import WindowSpec

ROW_COLUMN = "__row__"  # the stream's input row index, for row windows
_ids = itertools.count(1)


@dataclass(frozen=True)
class Query:
    """An immutable query description; see the module docstring."""

    schema: Schema
    name: str = "query"
    steps: tuple[Any, ...] = ()
    window_spec: WindowSpec | None = None
    keys: tuple[str, ...] = ()
    aggs: tuple[tuple[str, Agg], ...] = ()
    having_expr: Expr | None = None

    def where(self, predicate: Expr) -> Query:
        return replace(self, steps=(*self.steps, ("where", as_expr(predicate))))

    def select(self, *names: str, **exprs: Expr | str) -> Query:
        """Keep ``names`` and computed ``exprs``; drop every other column."""
        e = {k: as_expr(v) for k, v in exprs.items()}
        return replace(self, steps=(*self.steps, ("select", (tuple(names), e))))

    def derive(self, **exprs: Expr | str) -> Query:
        """Add computed columns, keeping the others."""
        e = {k: as_expr(v) for k, v in exprs.items()}
        return replace(self, steps=(*self.steps, ("derive", e)))

    def join(
        self, table: StaticTable, on: str, columns: Sequence[str] | str | None = None
    ) -> Query:
        """Inner join with a static table: the stream's ``on`` column against the table key;
        ``columns``: the table's columns to add (one name or several; default all)."""
        if columns is None:
            take = tuple(table.value_names)
        else:
            take = (columns,) if isinstance(columns, str) else tuple(columns)
        return replace(self, steps=(*self.steps, ("join", (table, on, take))))

    def window(
        self,
        *,
        size: int,
        slide: int | None = None,
        range_: str | None = None,
        rows: bool = False,
    ) -> Query:
        """A range window on event-time column ``range_`` or a row window (``rows=True``);
        ``slide`` defaults to ``size`` (tumbling)."""
        if (range_ is None) == (not rows):
            raise StreamError("window: give either range_=<time column> or rows=True")
        self._once("window", self.window_spec is not None)
        spec = WindowSpec(size, size if slide is None else slide, range_)
        return replace(self, window_spec=spec)

    def group_by(self, *cols: str) -> Query:
        self._once("group_by", bool(self.keys), "give every key in one call")
        return replace(self, keys=tuple(cols))

    def agg(self, **aggs: Agg | str | tuple[str, str]) -> Query:
        """Named aggregates: ``agg(n=Agg.count(), total=("sum", "cpu"))``."""
        if not aggs:
            raise StreamError("agg: give at least one aggregate")
        self._once("agg", bool(self.aggs), "give every aggregate in one call")
        return replace(self, aggs=tuple((k, Agg.parse(v)) for k, v in aggs.items()))

    def having(self, predicate: Expr) -> Query:
        p = as_expr(predicate)
        return replace(self, having_expr=p if self.having_expr is None else self.having_expr & p)

    def _once(self, what: str, already: bool, hint: str = "build a new query for another") -> None:
        if already:
            raise StreamError(f"query {self.name!r}: {what} is already set ({hint})")

    def compile(self) -> Plan:
        return Plan.build(self)


@dataclass
class Plan:
    """A compiled query: what a task runs and how its results finalise."""

    query: Query
    qid: int
    steps: list[Step]
    window: WindowSpec
    time_col: str
    input_cols: tuple[str, ...]
    keys: tuple[str, ...]
    key_dtypes: list[np.dtype]
    key_ranges: list[tuple[int, int] | None]
    key_decode: list[np.ndarray | None]
    value_dtypes: dict[str, np.dtype]
    aggs: tuple[tuple[str, Agg], ...]
    needs: Needs
    having: Expr | None
    out_dtypes: dict[str, np.dtype] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.query.name

    @staticmethod
    def build(q: Query) -> Plan:
        schema = q.schema
        if q.window_spec is None:
            raise StreamError(f"query {q.name!r}: no window (call .window(...))")
        if not q.aggs:
            raise StreamError(f"query {q.name!r}: no aggregate (call .agg(...))")
        win = q.window_spec
        if win.rows:
            time_col = ROW_COLUMN
        else:
            time_col = win.on or ""
            if time_col not in schema:
                raise StreamError(f"window: {time_col!r} is not a column of the input schema")
            if schema[time_col] != np.dtype(np.int64):
                raise StreamError(f"window: time column {time_col!r} must be int64")
        steps: list[Step] = []
        available = [*schema, ROW_COLUMN] if win.rows else list(schema)
        for kind, arg in q.steps:
            st: Step
            if kind == "where":
                st = Where(arg)
            elif kind == "select":
                names = arg[0]
                if win.rows and ROW_COLUMN not in names:  # the window's, never the user's
                    names = (*names, ROW_COLUMN)
                st = Select(names, arg[1])
            elif kind == "derive":
                st = Derive(arg)
            else:
                st = Join(arg[0], arg[1], arg[2])
            if time_col in st.writes():
                # Tasks are cut, ordered and bounded on the input's time: a computed one
                # would put rows in windows the dispatcher never cut for.
                what = "the row index" if win.rows else f"the time column {time_col!r}"
                raise StreamError(f"{kind}: cannot write {what}; derive a new column instead")
            available = st.output(available)
            steps.append(st)
        if time_col not in available:
            raise StreamError(f"window: time column {time_col!r} was dropped by a select")
        for k in q.keys:
            if k not in available:
                raise StreamError(
                    f"group_by: unknown column {k!r} (available: {', '.join(available)})"
                )
        value_cols = []
        for name, a in q.aggs:
            if a.column is not None:
                if a.column not in available:
                    raise StreamError(
                        f"aggregate {name!r}: unknown column {a.column!r} "
                        f"(available: {', '.join(available)})"
                    )
                value_cols.append(a.column)
            if name in q.keys:
                raise StreamError(f"aggregate name {name!r} is also a group key")
        for name in (*q.keys, *(n for n, _ in q.aggs)):
            if name in ("window_start", "window_end"):
                raise StreamError(f"{name!r} is a result column of every window: rename it")
        if len(set(q.keys)) != len(q.keys):
            raise StreamError(f"group_by: a column named twice ({', '.join(q.keys)})")
        sums = tuple(dict.fromkeys(a.column for _, a in q.aggs if a.fn in ("sum", "avg")))
        mins = tuple(dict.fromkeys(a.column for _, a in q.aggs if a.fn == "min"))
        maxs = tuple(dict.fromkeys(a.column for _, a in q.aggs if a.fn == "max"))
        needs = Needs(sums, mins, maxs)  # type: ignore[arg-type]
        final = {time_col, *q.keys, *value_cols}
        compile_steps(steps, sorted(final))
        # Joined columns used only as group keys travel as dense ranks, decoded at the end.
        key_decode: list[np.ndarray | None] = [None] * len(q.keys)
        key_ranges: list[tuple[int, int] | None] = [None] * len(q.keys)
        for i, st in enumerate(steps):
            if not isinstance(st, Join):
                continue
            after = steps[i + 1 :]
            # Read later (as a value), or written over later (the key is then another
            # column's values, not the table's): the real values must travel.
            later = set().union(*(s.reads() | s.writes() for s in after)) | set(value_cols)
            codes = frozenset(c for c in st.take if c in q.keys and c not in later)
            st.set_codes(codes)
            for j, k in enumerate(q.keys):
                if k in codes:
                    key_decode[j] = st.table.uniques[k]
                    key_ranges[j] = (0, max(len(st.table.uniques[k]) - 1, 0))
        input_cols = tuple(c for c in schema if c in _reads_before(steps, final))
        # Output dtypes from a dry run on an empty batch (also checks the expressions).
        empty: dict[str, Any] = {c: np.empty(0, schema[c]) for c in input_cols}
        if win.rows:
            empty[ROW_COLUMN] = np.empty(0, np.int64)
        dry = _dry_run(steps, empty)
        key_dtypes = [
            key_decode[j].dtype if key_decode[j] is not None else dry[k].dtype
            for j, k in enumerate(q.keys)
        ]
        value_dtypes = {c: dry[c].dtype for c in value_cols}
        for name, a in q.aggs:
            if a.fn in ("min", "max") and value_dtypes[a.column or ""].kind == "c":
                raise StreamError(
                    f"aggregate {name!r}: {a.fn} of complex column {a.column!r} (complex "
                    "numbers have no order: take abs() first)"
                )
        plan = Plan(
            q,
            next(_ids),
            steps,
            win,
            time_col,
            input_cols,
            q.keys,
            [dry[k].dtype for k in q.keys],
            key_ranges,
            key_decode,
            value_dtypes,
            q.aggs,
            needs,
            q.having_expr,
        )
        out: dict[str, np.dtype] = {
            "window_start": np.dtype(np.int64),
            "window_end": np.dtype(np.int64),
        }
        out.update(zip(q.keys, key_dtypes, strict=True))
        for name, a in q.aggs:
            if a.fn == "count":
                out[name] = np.dtype(np.int64)
            elif a.fn == "sum":
                out[name] = sum_dtype(value_dtypes[a.column or ""])
            elif a.fn == "avg":
                kind = value_dtypes[a.column or ""].kind
                out[name] = np.dtype(np.complex128 if kind == "c" else np.float64)
            else:
                out[name] = value_dtypes[a.column or ""]
        plan.out_dtypes = out
        if q.having_expr is not None:
            check_columns(q.having_expr, list(out), "having")
        return plan

    def finalize(self, rows: Partials) -> dict[str, np.ndarray]:
        """Window rows (host arrays) -> result columns, with ``having`` applied."""
        k = rows.index
        out: dict[str, np.ndarray] = {
            "window_start": k * self.window.slide,
            "window_end": k * self.window.slide + self.window.size,
        }
        for j, name in enumerate(self.keys):
            dec = self.key_decode[j]
            out[name] = dec[rows.keys[j]] if dec is not None else rows.keys[j]
        for name, a in self.aggs:
            if a.fn == "count":
                out[name] = rows.count
            elif a.fn == "sum":
                out[name] = rows.sums[a.column or ""]
            elif a.fn == "avg":
                out[name] = rows.sums[a.column or ""] / rows.count
            elif a.fn == "min":
                out[name] = rows.mins[a.column or ""]
            else:
                out[name] = rows.maxs[a.column or ""]
        if self.having is not None and len(k):
            keep = np.asarray(self.having.eval(out, np))
            if keep.dtype != np.bool_:
                raise StreamError(f"having {self.having!r} is not a boolean condition")
            if not keep.all():
                out = {c: v[keep] for c, v in out.items()}
        return out

    def empty_result(self) -> dict[str, np.ndarray]:
        return {c: np.empty(0, d) for c, d in self.out_dtypes.items()}


def _dry_run(steps: Sequence[Step], cols: dict[str, Any]) -> dict[str, Any]:
    """The steps on an empty batch: the output dtypes, and one line naming the step whose
    expressions the columns' types cannot compute (numpy's error said nothing of where)."""
    for st in steps:
        try:
            cols = st.apply(cols, np)
        except StreamError:
            raise
        except (TypeError, ValueError, ArithmeticError) as exc:
            cast = isinstance(exc, OverflowError) or isinstance(st, Join)
            hint = " (cast the column first: col(name).cast('int64'))" * cast
            raise StreamError(f"{st.label()}: {exc}{hint}") from None
    return cols


def _reads_before(steps: Sequence[Step], final: set[str]) -> set[str]:
    """Input columns the steps (and the window) read from the source."""
    needed = set(final)
    for st in reversed(steps):
        needed = (needed - st.writes()) | st.reads()
    return needed
