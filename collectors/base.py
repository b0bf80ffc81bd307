"""The interface every collector implements, and the sample record they produce."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

FieldValue = float | int | str | bool


@dataclass(slots=True)
class Sample:
    """One observation of one series.

    ``source`` names the measurement (``cpu``, ``memory``, ``process``, ``rapl``, ``gpu``,
    ``power_model``...), ``tags`` carry bounded identity (domain, gpu index, pid), ``fields``
    carry values in base units (seconds, bytes, joules, watts, ratios 0..1, hertz).
    ``ts`` is Unix time in seconds. ``ts_ns``, when set, is the same time in integer
    nanoseconds, exact where the source had it (OTLP): exporters that store nanoseconds
    prefer it to ``ts``, whose float carries only about 0.24 us today.
    """

    source: str
    ts: float
    tags: dict[str, str] = field(default_factory=dict)
    fields: dict[str, FieldValue] = field(default_factory=dict)
    ts_ns: int | None = None


def number(s: Sample, key: str) -> float | None:
    """Field ``key`` of ``s`` as a float; None when absent or not a number (a bool is not)."""
    v = s.fields.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v)


class CollectorUnavailable(RuntimeError):
    """Raised by a collector factory when its source does not exist on this node.

    The scheduler logs the message once at INFO and runs without that collector: a node
    without RAPL or without a GPU is normal, not an error.
    """


@runtime_checkable
class Collector(Protocol):
    """A source of samples. ``sample`` must be cheap and must never sleep."""

    name: str

    def sample(self, now: float) -> list[Sample]: ...

    def close(self) -> None: ...
