"""Node memory and swap, in bytes."""

from __future__ import annotations

import psutil

from wattspan.collectors.base import Sample


class MemoryCollector:
    """One ``memory`` sample per tick.

    Fields (bytes): ``total_bytes``, ``used_bytes``, ``available_bytes``, ``cached_bytes``,
    ``buffers_bytes``, ``free_bytes``, ``swap_total_bytes``, ``swap_used_bytes``; plus
    ``used_ratio`` (0..1, as ``1 - available/total``, the figure ``free`` users expect).
    """

    name = "memory"

    def sample(self, now: float) -> list[Sample]:
        vm = psutil.virtual_memory()
        sw = psutil.swap_memory()
        fields: dict[str, float | int | str | bool] = {
            "total_bytes": vm.total,
            "used_bytes": vm.used,
            "available_bytes": vm.available,
            "free_bytes": vm.free,
            "cached_bytes": getattr(vm, "cached", 0),
            "buffers_bytes": getattr(vm, "buffers", 0),
            "swap_total_bytes": sw.total,
            "swap_used_bytes": sw.used,
            "used_ratio": 1.0 - vm.available / vm.total if vm.total else 0.0,
        }
        return [Sample("memory", now, {}, fields)]

    def close(self) -> None:
        pass


def create() -> MemoryCollector:
    return MemoryCollector()
