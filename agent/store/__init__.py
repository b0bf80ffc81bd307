"""The embedded SQLite store: runs and their samples, zero servers."""

from wattspan.agent.store.sqlite import (
    ConfusionRow,
    MetricRow,
    RetentionResult,
    Run,
    SpanRow,
    Store,
    StoreError,
    default_store_path,
)

__all__ = [
    "ConfusionRow",
    "MetricRow",
    "RetentionResult",
    "Run",
    "SpanRow",
    "Store",
    "StoreError",
    "default_store_path",
]
