"""Node memory and swap, in bytes."""

from __future__ import annotations

import re

import psutil

from wattspan.collectors.base import Sample

_SWAP_TOTAL = re.compile(rb"(?m)^SwapTotal:\s+(\d+)")
_SWAP_FREE = re.compile(rb"(?m)^SwapFree:\s+(\d+)")


def _swap_bytes() -> tuple[int, int]:
    """(total, used) swap in bytes, as ``psutil.swap_memory()`` reports them: ``SwapTotal``
    and ``SwapTotal - SwapFree`` of /proc/meminfo. Read here because psutil also reads and
    parses /proc/vmstat for swap-in/out counts that this collector does not report, which
    cost more than the rest of the sample."""
    try:
        with open("/proc/meminfo", "rb") as f:
            data = f.read()
        total_m, free_m = _SWAP_TOTAL.search(data), _SWAP_FREE.search(data)
    except OSError:
        total_m = free_m = None
    if total_m is None or free_m is None:  # not Linux, or an odd kernel: psutil knows
        sw = psutil.swap_memory()
        return sw.total, sw.used
    total = int(total_m.group(1)) * 1024
    return total, total - int(free_m.group(1)) * 1024


class MemoryCollector:
    """One ``memory`` sample per tick.

    Fields (bytes): ``total_bytes``, ``used_bytes``, ``available_bytes``, ``cached_bytes``,
    ``buffers_bytes``, ``free_bytes``, ``swap_total_bytes``, ``swap_used_bytes``; plus
    ``used_ratio`` (0..1, as ``1 - available/total``, the figure ``free`` users expect).
    """

    name = "memory"

    def sample(self, now: float) -> list[Sample]:
        vm = psutil.virtual_memory()
        swap_total, swap_used = _swap_bytes()
        fields: dict[str, float | int | str | bool] = {
            "total_bytes": vm.total,
            "used_bytes": vm.used,
            "available_bytes": vm.available,
            "free_bytes": vm.free,
            "cached_bytes": getattr(vm, "cached", 0),
            "buffers_bytes": getattr(vm, "buffers", 0),
            "swap_total_bytes": swap_total,
            "swap_used_bytes": swap_used,
            "used_ratio": 1.0 - vm.available / vm.total if vm.total else 0.0,
        }
        return [Sample("memory", now, {}, fields)]

    def close(self) -> None:
        pass


def create() -> MemoryCollector:
    return MemoryCollector()
