"""Naming runs on the command line: what a reference matches, and what to say when it
matches several runs or none."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Sequence

from wattspan.agent.store import Run, Store

#: Runs listed when a reference is ambiguous.
LISTED = 10


def _err(msg: str) -> None:
    print(f"wattspan: {msg}", file=sys.stderr)


def _line(r: Run) -> str:
    import datetime as dt

    when = dt.datetime.fromtimestamp(r.start_ts).strftime("%Y-%m-%d %H:%M:%S")
    return f"  {r.id[:8]}  {r.name[:30]:<30}  {when}"


def resolve_run(store: Store, ref: str, *, quiet_newest: bool = False) -> Run | None:
    """The run ``ref`` names (id, unique id prefix, ``latest``, or name: the newest of that
    name), else None after saying why on stderr: an ambiguous prefix lists its runs, a
    reference that matches nothing suggests the nearest names and ids. A name shared by
    several runs picks the newest and says so (unless ``quiet_newest``)."""
    try:
        run = store.resolve_run(ref)
    except KeyError:
        run = None
    runs = store.runs()
    if run is None:
        prefixed = [r for r in runs if r.id.startswith(ref)]
        if len(prefixed) > 1:
            _err(f"run id prefix {ref!r} matches {len(prefixed)} runs; give more characters:")
            for r in prefixed[:LISTED]:
                print(_line(r), file=sys.stderr)
            return None
        names = list(dict.fromkeys(r.name for r in runs))
        near = difflib.get_close_matches(ref, names, n=3, cutoff=0.5)
        near += [r.id[:8] for r in runs if r.id[:8].startswith(ref[:4]) and len(ref) >= 4][:2]
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        _err(f"no run matches {ref!r}{hint} (see `wattspan runs`)")
        return None
    if run.id != ref and not run.id.startswith(ref) and ref not in ("latest", "last"):
        same = [r for r in runs if r.name == run.name]
        if len(same) > 1 and not quiet_newest:
            _err(f"name {ref!r} matches {len(same)} runs; using the newest, {run.id[:8]}:")
            for r in same[:LISTED]:
                print(_line(r), file=sys.stderr)
    return run


def _named_runs(store: Store, run: Run, ref: str) -> list[Run]:
    """Every run of ``run``'s name when ``ref`` is that name (not an id or a prefix of
    one), oldest first and at most :data:`LISTED` (the newest), saying so when several."""
    if ref != run.name or run.id.startswith(ref) or ref in ("latest", "last"):
        return [run]
    same = [r for r in store.runs() if r.name == run.name]
    if len(same) < 2:
        return [run]
    kept = same[:LISTED]
    more = f" (the newest {len(kept)})" if len(same) > len(kept) else ""
    _err(f"name {ref!r} matches {len(same)} runs; taking them all{more}, oldest first")
    return list(reversed(kept))


def resolve_runs(
    store: Store, refs: Sequence[str], *, every_of_name: bool = False
) -> list[Run] | int:
    """Every reference resolved, or exit code 1 once one fails (after all were tried, so
    every bad one is named). With ``every_of_name`` (``compare``, ``report``), a name that
    several runs share stands for all of them (up to :data:`LISTED`); a run named twice
    comes once."""
    out: list[Run] = []
    failed = False
    for ref in refs:
        r = resolve_run(store, ref, quiet_newest=every_of_name)
        if r is None:
            failed = True
        else:
            out.extend(_named_runs(store, r, ref) if every_of_name else [r])
    if failed:
        return 1
    return list({r.id: r for r in out}.values()) if every_of_name else out
