"""Node samplers: one module per source, each a plain object with ``sample(now)``.

The agent core knows no collector by name beyond the registry in :mod:`.registry`.
"""

from wattspan.collectors.base import Collector, CollectorUnavailable, Sample

__all__ = ["Collector", "CollectorUnavailable", "Sample"]
