"""The GPU processor: the same kernels on CuPy, several tasks in flight.

Each of its ``depth`` worker threads owns a non-blocking CUDA stream, so while one task's
columns are copied to the device another's kernels run and a third's results come back
(SABER's pipelining of transfers against compute). No CuPy or no CUDA device: the worker
is off (``enabled`` is false) and says so in one info line. For tests it can be built with
``xp=numpy``: a processor kind of its own that goes through the very scheduling path the
GPU takes.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from .workers import Processor

log = logging.getLogger(__name__)


def _cupy() -> tuple[Any, str]:
    """CuPy if it imports and sees a device, else ``(None, why)``."""
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken CUDA install
        return None, f"no CuPy ({type(e).__name__})"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None, "no CUDA device"
    except Exception as e:
        return None, f"no CUDA device ({type(e).__name__})"
    return cupy, ""


class GpuWorker(Processor):
    """``xp=None``: CuPy when available; ``xp=numpy`` for a GPU-shaped processor in tests."""

    def __init__(
        self, depth: int = 4, *, xp: Any = None, kind: str = "gpu", kernel: str = "vector"
    ) -> None:
        self.reason = ""
        if xp is None:
            xp, self.reason = _cupy()
            if xp is None:
                log.info("stream engine: GPU worker off: %s", self.reason)
        self._on = xp is not None
        super().__init__(kind, depth, xp=xp, kernel=kernel)

    @property
    def enabled(self) -> bool:
        return self._on

    def _worker_context(self, index: int) -> Any:
        cuda = getattr(self.xp, "cuda", None)
        if cuda is None:  # numpy standing in for the device
            return contextlib.nullcontext()
        return cuda.Stream(non_blocking=True)
