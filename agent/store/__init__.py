"""The embedded SQLite store: runs and their samples, zero servers."""

from wattspan.agent.store.sqlite import (
    ConfusionRow,
    MetricRow,
    Run,
    SpanRow,
    Store,
    default_store_path,
)

__all__ = [
    "ConfusionRow",
    "MetricRow",
    "Run",
    "SpanRow",
    "Store",
    "default_store_path",
]
