"""The array namespace ``xp`` the kernels run on: numpy on CPU workers, CuPy on the GPU
worker. Only what differs between the two lives here (moving arrays, scatter updates)."""

from __future__ import annotations

from typing import Any

import numpy as np


def to_device(xp: Any, a: np.ndarray) -> Any:
    """``a`` in namespace ``xp`` (a no-op for numpy)."""
    return a if xp is np else xp.asarray(a)


def to_host(a: Any) -> np.ndarray:
    """A numpy array from a numpy or CuPy array."""
    if isinstance(a, np.ndarray):
        return a
    get = getattr(a, "get", None)
    return get() if get is not None else np.asarray(a)


def scatter(xp: Any, fn: str, out: Any, idx: Any, vals: Any) -> None:
    """``out[idx] (fn)= vals`` with repeated indices accumulating (``fn``: add, minimum,
    maximum)."""
    ufunc = getattr(xp, fn)
    at = getattr(ufunc, "at", None)
    if at is not None:
        at(out, idx, vals)
        return
    import cupyx  # older CuPy: the scatter helpers instead of ufunc.at

    {"add": cupyx.scatter_add, "minimum": cupyx.scatter_min, "maximum": cupyx.scatter_max}[fn](
        out, idx, vals
    )


def scalar(a: Any) -> int:
    """A Python int from a 0-d array of either namespace."""
    return int(a)
