"""glibc malloc settings for a process that runs the stream engine's worker threads.

A task's temporaries (a 4 MiB task of YSB: columns of ~120k rows, about 1 MB each) are above
glibc's mmap threshold, so each is mapped and unmapped again, and freed heap tops are
trimmed. In a process with more than one thread every unmap or trim is a TLB shootdown: an
interrupt to each other CPU the process ran on, and in a virtual machine each of those is a
VM exit. Measured on this project's 2-vCPU VM (YSB, 20 M events, best of 3): one worker
thread beside the calling thread ran at 72 M events/s against 209 inline at 4 MiB tasks,
and two threads at 108; with freed memory kept (:func:`keep_freed_memory`) one thread ran
at 144 and two at 237, and at 64 MiB tasks two threads at 359 against 177.

The cost of keeping it: the process's RSS stays at its peak (about the temporaries of the
tasks in flight) instead of shrinking between tasks. Hence a call that ``wattspan stream
run``'s worker process makes for itself (engines/stream/cli_worker.py), not something the
engine does to whichever program imports it; a program that runs the engine on threads
may call it too.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: allocations below this come from the heap, never from a mapping of their own
MMAP_THRESHOLD = 256 << 20
#: freed memory at the top of a heap is returned to the kernel only beyond this
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory(
    mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD
) -> bool:
    """Sets glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` (what the
    ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` environment variables set at
    start-up); True when glibc took both, False elsewhere (musl, macOS)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )
