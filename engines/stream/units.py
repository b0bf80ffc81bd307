"""Sizes as people write them: ``1M`` (or ``1MiB``, ``1m``) is 1,048,576 bytes, ``64k`` is
65,536, and a plain number is bytes. Binary units, as SABER's task sizes are."""

from __future__ import annotations

import numbers
import re

_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)(?:i?[bB])?\s*$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
EXAMPLES = "e.g. 65536, 64k, 1M, 16MiB"


def size_bytes(v: object) -> int:
    """Bytes from an integer or a size string; ``ValueError`` with the reason otherwise
    (each caller names the key: the engine, the CLI and the experiment config)."""
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        n = int(v)
    elif isinstance(v, str) and (m := _SIZE.match(v.replace("_", ""))):
        n = int(m.group(1)) * _UNITS[m.group(2).lower()]
    else:
        raise ValueError(f"not a size in bytes: {v!r} ({EXAMPLES})")
    if n < 1:
        raise ValueError(f"must be at least 1 byte, got {v!r}")
    return n
