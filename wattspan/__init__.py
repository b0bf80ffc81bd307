"""wattspan: resource and energy attribution for data and ML pipelines.

The instrumentation API (``span``, ``track``, ``log_metric``, ``log_params``,
``log_confusion_matrix``, ``count_items``, ``flush``, ``dropped_spans``) lives in
:mod:`wattspan.instrument` and is loaded on first use, so that the agent and CLI never pay
for the OpenTelemetry SDK import they do not need. ``measure`` (in-process measurement
windows, :mod:`wattspan.measurement`) needs no SDK at all.
"""

from __future__ import annotations

# Not ``from typing import TYPE_CHECKING``: typing costs milliseconds that ``wattspan run``
# pays before it can start its command.
TYPE_CHECKING = False

__version__ = "0.1.0"

# Run from a source checkout's top folder (``python -c``, ``python -m wattspan``: the
# current folder comes first on sys.path), this file is the checkout's, and the subpackages
# that pyproject.toml maps from sibling folders (``wattspan.agent`` from ``agent/``...) would
# not be found, whatever is installed. The checkout's top folder serves them then.
_top = __path__[0].rpartition("/")[0] if __path__ else ""
if _top:
    import os.path as _p

    if _p.isfile(_p.join(_top, "pyproject.toml")) and _p.isfile(
        _p.join(_top, "agent", "__init__.py")
    ):
        __path__.append(_top)
    del _p
del _top

if TYPE_CHECKING:
    from typing import Any

    from wattspan.instrument import (
        count_items,
        dropped_spans,
        flush,
        log_confusion_matrix,
        log_metric,
        log_params,
        span,
        track,
    )
    from wattspan.measurement import measure

__all__ = [  # noqa: RUF022 (the API names, then the version)
    "count_items",
    "dropped_spans",
    "flush",
    "log_confusion_matrix",
    "log_metric",
    "log_params",
    "measure",
    "span",
    "track",
    "__version__",
]
# Literal above because tools read __all__ statically; the lazily loaded names derive from it.
_API = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    if name == "measure":
        from wattspan.measurement import measure

        globals()[name] = measure
        return measure
    if name in _API:
        from wattspan import instrument

        value = getattr(instrument, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'wattspan' has no attribute {name!r}")
