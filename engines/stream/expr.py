"""Column expressions for selections, computed columns and having clauses.

``col("speed") < 40``, ``(col("position") // 5280)``, ``col("event_type").isin([0, 1])``,
``(col("a") > 1) & ~(col("b") == 2)``, ``1 / -col("x")``, ``abs(col("d")) ** 2``. An
expression evaluates with Python operators on whatever arrays it is given, so the same tree
runs on numpy arrays, on CuPy arrays (the GPU worker) and on pandas Series (the tests'
reference evaluator).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .errors import StreamError

Columns = Mapping[str, Any]


def _op(op: Callable[[Any, Any], Any], sym: str, rev: bool = False) -> Callable[..., Expr]:
    """An operator method of :class:`Expr` (``rev``: the reflected one, ``1 / col("x")``)."""

    def method(self: Expr, o: Any) -> Expr:
        return self._bin(o, op, sym, rev)

    return method


class Expr:
    """A node of an expression tree; build with :func:`col` and :func:`lit`."""

    def eval(self, cols: Columns, xp: Any = np) -> Any:
        raise NotImplementedError

    def columns(self) -> set[str]:
        """The input columns the expression reads."""
        raise NotImplementedError

    def _bin(self, other: Any, op: Callable[[Any, Any], Any], sym: str, rev: bool = False) -> Expr:
        o = other if isinstance(other, Expr) else Lit(other)
        return BinOp(o, self, op, sym) if rev else BinOp(self, o, op, sym)

    # Arithmetic and bitwise operators from either side; comparisons need no reflected
    # form (Python swaps them: ``1 < col("x")`` is ``col("x") > 1``).
    __add__, __radd__ = _op(operator.add, "+"), _op(operator.add, "+", True)
    __sub__, __rsub__ = _op(operator.sub, "-"), _op(operator.sub, "-", True)
    __mul__, __rmul__ = _op(operator.mul, "*"), _op(operator.mul, "*", True)
    __truediv__, __rtruediv__ = _op(operator.truediv, "/"), _op(operator.truediv, "/", True)
    __floordiv__ = _op(operator.floordiv, "//")
    __rfloordiv__ = _op(operator.floordiv, "//", True)
    __mod__, __rmod__ = _op(operator.mod, "%"), _op(operator.mod, "%", True)
    __pow__, __rpow__ = _op(operator.pow, "**"), _op(operator.pow, "**", True)
    __and__, __rand__ = _op(operator.and_, "&"), _op(operator.and_, "&", True)
    __or__, __ror__ = _op(operator.or_, "|"), _op(operator.or_, "|", True)
    __xor__, __rxor__ = _op(operator.xor, "^"), _op(operator.xor, "^", True)
    __lt__ = _op(operator.lt, "<")
    __le__ = _op(operator.le, "<=")
    __gt__ = _op(operator.gt, ">")
    __ge__ = _op(operator.ge, ">=")
    __eq__ = _op(operator.eq, "==")  # type: ignore[assignment]
    __ne__ = _op(operator.ne, "!=")  # type: ignore[assignment]

    def __invert__(self) -> Expr:
        return UnOp(self, operator.invert, "~")

    def __neg__(self) -> Expr:
        return UnOp(self, operator.neg, "-")

    def __pos__(self) -> Expr:
        return self

    def __abs__(self) -> Expr:
        return UnOp(self, abs, "abs")

    def __hash__(self) -> int:
        return id(self)

    def __bool__(self) -> bool:
        raise StreamError("an expression has no truth value: combine with & | ~, not and/or/not")

    def cast(self, dtype: Any) -> Expr:
        """The values as ``dtype`` (``"int64"``, ``np.float32``): widen a narrow column
        before arithmetic that would overflow it."""
        try:
            dt = np.dtype(dtype) if dtype is not None else None
        except TypeError:
            dt = None
        # Numbers only: a string or datetime column compiles, then fails in every kernel.
        if dt is None or dt.kind not in "biufc":
            raise StreamError(
                f"cast: {dtype!r} is not a numeric numpy dtype (bool, int, uint, float, complex)"
            )
        return Cast(self, dt)

    def isin(self, values: Sequence[Any]) -> Expr:
        """True where the value is one of ``values`` (a list or tuple, not one string)."""
        if (
            isinstance(values, (str, bytes))
            or not hasattr(values, "__iter__")
            or getattr(values, "ndim", 1) == 0  # a 0-d array has __iter__ but no items
        ):
            raise StreamError(
                f"isin: expected a list of values, got {values!r} (for one value: [{values!r}])"
            )
        return IsIn(self, tuple(values))


class Col(Expr):
    def __init__(self, name: str) -> None:
        self.name = name

    def eval(self, cols: Columns, xp: Any = np) -> Any:
        return cols[self.name]

    def columns(self) -> set[str]:
        return {self.name}

    def __repr__(self) -> str:
        return self.name


class Lit(Expr):
    def __init__(self, value: Any) -> None:
        if isinstance(value, (list, tuple, dict, set)):
            raise StreamError(f"literal {value!r} is not a scalar (use .isin for lists)")
        self.value = value

    def eval(self, cols: Columns, xp: Any = np) -> Any:
        return self.value

    def columns(self) -> set[str]:
        return set()

    def __repr__(self) -> str:
        return repr(self.value)


class BinOp(Expr):
    def __init__(self, a: Expr, b: Expr, op: Callable[[Any, Any], Any], sym: str) -> None:
        self.a, self.b, self.op, self.sym = a, b, op, sym

    def eval(self, cols: Columns, xp: Any = np) -> Any:
        return self.op(self.a.eval(cols, xp), self.b.eval(cols, xp))

    def columns(self) -> set[str]:
        return self.a.columns() | self.b.columns()

    def __repr__(self) -> str:
        return f"({self.a!r} {self.sym} {self.b!r})"


class UnOp(Expr):
    def __init__(self, a: Expr, op: Callable[[Any], Any], sym: str) -> None:
        self.a, self.op, self.sym = a, op, sym

    def eval(self, cols: Columns, xp: Any = np) -> Any:
        return self.op(self.a.eval(cols, xp))

    def columns(self) -> set[str]:
        return self.a.columns()

    def __repr__(self) -> str:
        return f"abs({self.a!r})" if self.sym == "abs" else f"{self.sym}{self.a!r}"


class Cast(Expr):
    def __init__(self, a: Expr, dtype: np.dtype) -> None:
        self.a, self.dtype = a, dtype

    def eval(self, cols: Columns, xp: Any = np) -> Any:
        v = self.a.eval(cols, xp)
        # A literal is a Python scalar: make it one of the dtype, as an array's astype would.
        return v.astype(self.dtype) if hasattr(v, "astype") else self.dtype.type(v)

    def columns(self) -> set[str]:
        return self.a.columns()

    def __repr__(self) -> str:
        return f"{self.a!r}.cast({self.dtype.name!r})"


class IsIn(Expr):
    def __init__(self, a: Expr, values: tuple[Any, ...]) -> None:
        self.a, self.values = a, values

    def eval(self, cols: Columns, xp: Any = np) -> Any:
        v = self.a.eval(cols, xp)
        if hasattr(v, "isin"):  # a pandas Series
            return v.isin(self.values)
        return xp.isin(v, xp.asarray(self.values))

    def columns(self) -> set[str]:
        return self.a.columns()

    def __repr__(self) -> str:
        return f"{self.a!r} in {self.values!r}"


def col(name: str) -> Col:
    """A reference to column ``name``."""
    return Col(name)


def lit(value: Any) -> Lit:
    """A scalar constant."""
    return Lit(value)


def as_expr(e: Expr | str) -> Expr:
    """An expression from an expression or a column name."""
    if isinstance(e, Expr):
        return e
    if isinstance(e, str):
        return Col(e)
    raise StreamError(f"expected an expression or a column name, got {e!r}")


def check_columns(e: Expr, available: Sequence[str], where: str) -> None:
    """One clear error if ``e`` reads a column that does not exist at this step."""
    missing = sorted(e.columns() - set(available))
    if missing:
        raise StreamError(
            f"{where}: unknown column {missing[0]!r} (available: {', '.join(available)})"
        )
