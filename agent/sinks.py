"""The interface between the agent's record stream and its outputs (store, exporters)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from wattspan.collectors.base import Sample

StatValue = float | int | str


@runtime_checkable
class Sink(Protocol):
    """Receives every record the agent produces.

    ``write`` is called from the agent's threads and must return quickly. When it returns,
    the records are the sink's responsibility: an exporter must have them in its durable
    queue (that is what lets the OTLP receiver acknowledge a request).
    """

    name: str

    def write(self, samples: Sequence[Sample]) -> None: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self, timeout: float | None = None) -> None: ...

    def stats(self) -> dict[str, StatValue]:
        """Self-metrics: numbers become ``wattspan_exporter_<key>{exporter=name}``."""
        ...
