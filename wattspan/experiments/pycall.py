"""Child entry of the ``python`` kind: ``python -m wattspan.experiments.pycall MOD:FN RESULT``.

Reads the keyword arguments as JSON from ``$WATTSPAN_EXPERIMENT_KWARGS``, imports the
module (the working directory first on ``sys.path``, as ``python -m`` has it), calls the
function once and writes ``{"call_seconds", "call_cpu_seconds", "result"}`` as JSON to the
RESULT path: the call's own wall and CPU time, apart from the interpreter's start-up and the
import, which the run's figures include. With ``$WATTSPAN_EXPERIMENT_SPAN=1`` the call is a
``wattspan.span`` named after the function, attributed like any instrumented code.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import time
from typing import Any


def call(target: str, kwargs: dict[str, Any], span: bool = False) -> dict[str, Any]:
    mod_name, _, fn_name = target.partition(":")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    fn = getattr(importlib.import_module(mod_name), fn_name)
    ctx: Any = contextlib.nullcontext()
    if span:
        import wattspan

        ctx = wattspan.span(fn_name)
    with ctx:
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn(**kwargs)
        w1, c1 = time.perf_counter(), time.process_time()
    try:
        json.dumps(result)
    except (TypeError, ValueError):
        result = repr(result)[:1000]
    return {"call_seconds": w1 - w0, "call_cpu_seconds": c1 - c0, "result": result}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(
            "usage: python -m wattspan.experiments.pycall MODULE:FUNCTION RESULT", file=sys.stderr
        )
        return 2
    kwargs = json.loads(os.environ.get("WATTSPAN_EXPERIMENT_KWARGS", "{}"))
    out = call(argv[0], kwargs, os.environ.get("WATTSPAN_EXPERIMENT_SPAN") == "1")
    with open(argv[1], "w", encoding="utf-8") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
