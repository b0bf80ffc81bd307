"""Node samplers: one module per source, each a plain object with ``sample(now)``.

The agent core knows no collector by name beyond the registry in :mod:`.registry`.
The names below load :mod:`.base` on first use: ``wattspan run`` imports :mod:`.head`
before it spawns its command, and ``base`` brings ``dataclasses`` and ``typing`` with it.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from wattspan.collectors.base import Collector, CollectorUnavailable, Sample

__all__ = ["Collector", "CollectorUnavailable", "Sample"]


def __getattr__(name: str) -> object:
    if name in __all__:
        from wattspan.collectors import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
