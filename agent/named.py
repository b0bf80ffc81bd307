"""Named tuples without ``collections``.

``wattspan run`` builds a few named tuples (its result, the carbon intensity) in modules it
imports before it starts its command. ``collections.namedtuple`` brings in ``collections``
itself, ``operator``, ``reprlib`` and ``keyword`` and compiles each class from source: about
1.5 ms on the 2-vCPU test machine, added to every command's start (issue 15). A
:func:`record` is a tuple subclass with one property per field: the same equality,
unpacking, indexing, pickling and repr, plus ``_fields`` and ``_asdict``.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def record(typename: str, field_names: str, defaults: tuple[Any, ...] = ()) -> type:
    """A named tuple type, as ``collections.namedtuple(typename, field_names, defaults=)``."""
    fields = tuple(field_names.split())
    n, first_default = len(fields), len(fields) - len(defaults)
    if first_default < 0:
        raise TypeError(f"{typename}: more defaults than fields")

    def __new__(cls: type, *args: Any, **kw: Any) -> Any:
        if len(args) > n:
            raise TypeError(f"{typename}() takes {n} arguments, got {len(args)}")
        values = list(args)
        for i in range(len(args), n):
            name = fields[i]
            if name in kw:
                values.append(kw.pop(name))
            elif i >= first_default:
                values.append(defaults[i - first_default])
            else:
                raise TypeError(f"{typename}() missing argument {name!r}")
        if kw:
            raise TypeError(f"{typename}() got unexpected arguments {sorted(kw)}")
        return tuple.__new__(cls, values)

    def __repr__(self: tuple[Any, ...]) -> str:
        inner = ", ".join(f"{f}={v!r}" for f, v in zip(fields, self, strict=True))
        return f"{type(self).__name__}({inner})"

    def _asdict(self: tuple[Any, ...]) -> dict[str, Any]:
        return dict(zip(fields, self, strict=True))

    def __getnewargs__(self: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(self)

    ns: dict[str, Any] = {
        "__slots__": (),
        "__new__": __new__,
        "__repr__": __repr__,
        "__getnewargs__": __getnewargs__,
        "_asdict": _asdict,
        "_fields": fields,
    }
    for i, name in enumerate(fields):
        ns[name] = property(lambda self, i=i: self[i], doc=f"field {i}: {name}")
    return type(typename, (tuple,), ns)
