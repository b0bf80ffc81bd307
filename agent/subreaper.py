"""The child-subreaper flag (``prctl(PR_SET_CHILD_SUBREAPER)``, Linux 3.4 and later).

``wattspan run`` sets it before the spawn, so that descendants the command orphans are
reparented to wattspan and their CPU time reaches a wait4 of ours (agent/runner.py says why).

The call goes through ``_ctypes``, the C module under ``ctypes``: importing ``ctypes``
itself (its type classes, ``struct``, the endianness checks) costs 3-5 ms on the 2-vCPU
test machine, before the command may start, on every `wattspan run` (issue 15). The three
classes below are the whole of what a ``prctl`` call needs. Should a Python release change
``_ctypes``, the same call falls back to ``ctypes``.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37

_cached: list[Any] = []


def _light() -> tuple[Callable[..., int], type, type, Callable[[Any], Any]]:
    import _ctypes

    class Int(_ctypes._SimpleCData):  # type: ignore[name-defined,misc]
        _type_ = "i"

    class ULong(_ctypes._SimpleCData):  # type: ignore[name-defined,misc]
        _type_ = "L"

    class Fn(_ctypes.CFuncPtr):  # type: ignore[name-defined,misc]
        _flags_ = _ctypes.FUNCFLAG_CDECL
        _restype_ = Int

    class Libc:  # what CFuncPtr((name, lib)) reads: the dlopen handle
        _handle = _ctypes.dlopen(None, 2)  # RTLD_NOW of the running program: libc's symbols

    return Fn(("prctl", Libc)), Int, ULong, _ctypes.byref


def _full() -> tuple[Callable[..., int], type, type, Callable[[Any], Any]]:
    import ctypes

    return ctypes.CDLL(None).prctl, ctypes.c_int, ctypes.c_ulong, ctypes.byref


def _api() -> tuple[Callable[..., int], type, type, Callable[[Any], Any]] | None:
    if not _cached:
        api = None
        if sys.platform.startswith("linux"):
            for make in (_light, _full):
                try:
                    api = make()
                    break
                except (ImportError, AttributeError, OSError, TypeError):
                    continue
        _cached.append(api)
    return _cached[0]


def is_subreaper() -> bool:
    """Whether this process is a child subreaper now."""
    api = _api()
    if api is None:
        return False
    prctl, c_int, c_ulong, byref = api
    flag = c_int(0)
    zero = c_ulong(0)
    if prctl(PR_GET_CHILD_SUBREAPER, byref(flag), zero, zero, zero) != 0:
        return False
    return bool(flag.value)


def set_subreaper(on: bool) -> bool:
    """True when the kernel took the setting."""
    api = _api()
    if api is None:
        return False
    prctl, _, c_ulong, _ = api
    zero = c_ulong(0)
    return prctl(PR_SET_CHILD_SUBREAPER, c_ulong(int(on)), zero, zero, zero) == 0
