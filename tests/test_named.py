"""agent/named.py: the named tuples ``wattspan run`` builds before its spawn behave as
``collections.namedtuple``'s do."""

from __future__ import annotations

import collections
import pickle

import pytest

from wattspan.agent.carbon import Intensity
from wattspan.agent.named import record
from wattspan.agent.runner import RunResult

Point = record("Point", "x y z", defaults=(0,))
Reference = collections.namedtuple("Reference", "x y z", defaults=(0,))


def test_a_record_is_a_named_tuple() -> None:
    p, ref = Point(1, y=2), Reference(1, y=2)
    assert p == ref == (1, 2, 0) and tuple(p) == tuple(ref)
    assert (p.x, p.y, p.z) == (1, 2, 0) and p[1] == 2
    x, y, z = p
    assert (x, y, z) == (1, 2, 0)
    assert repr(p) == repr(ref).replace("Reference", "Point")
    assert p._asdict() == ref._asdict() and p._fields == ref._fields
    assert hash(p) == hash(ref)
    with pytest.raises(AttributeError):
        p.x = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        p.w = 5  # type: ignore[attr-defined]  # __slots__: no instance dict


@pytest.mark.parametrize(
    "args, kw",
    [((1, 2, 3, 4), {}), ((), {"y": 1}), ((1, 2), {"q": 3}), ((1,), {"x": 2, "y": 3})],
)
def test_wrong_arguments_are_type_errors_as_with_namedtuple(
    args: tuple[int, ...], kw: dict[str, int]
) -> None:
    with pytest.raises(TypeError):
        Reference(*args, **kw)
    with pytest.raises(TypeError):
        Point(*args, **kw)


def test_the_types_built_on_records_pickle_and_keep_their_methods() -> None:
    i = Intensity(300.0, "given")
    assert (i.pue, i.country) == (1.0, "")
    back = pickle.loads(pickle.dumps(i))
    assert back == i and type(back) is Intensity and back.label() == i.label()
    assert Intensity.from_dict(i.to_dict()) == i
    r = RunResult(3, None, {"a": 1})
    assert pickle.loads(pickle.dumps(r)) == r and r.exit_code == 3
