"""Span trees: parent/child structure of a run's spans, children in start order."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from wattspan.agent.store import SpanRow


@dataclass(slots=True)
class SpanNode:
    """A span with its place in the tree. ``depth`` is 0 for roots."""

    span: SpanRow
    depth: int
    children: list[SpanNode] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.span.name

    @property
    def resources(self) -> dict[str, Any]:
        return self.span.resources


def span_tree(spans: Iterable[SpanRow]) -> list[SpanNode]:
    """Roots of the span forest, children ordered by start time.

    A span whose parent is not among ``spans`` (a parent in another process that has not
    finished, or outside the run) becomes a root rather than disappearing. Parent links are
    looked up within the span's own trace, as in OpenTelemetry.
    """
    rows = sorted(spans, key=lambda s: (s.start_ts, s.end_ts, s.span_id))
    by_key = {(s.trace_id, s.span_id): s for s in rows}
    children: dict[tuple[str, str], list[SpanRow]] = {}
    roots: list[SpanRow] = []
    for s in rows:
        parent = (s.trace_id, s.parent_span_id) if s.parent_span_id else None
        if parent is not None and parent in by_key and parent != (s.trace_id, s.span_id):
            children.setdefault(parent, []).append(s)
        else:
            roots.append(s)

    seen: set[tuple[str, str]] = set()

    def build(s: SpanRow, depth: int) -> SpanNode:
        # Iterative over the stack would avoid deep recursion, but span trees are shallow
        # (pipeline > stage > epoch > batch); the ``seen`` set guards against cycles.
        seen.add((s.trace_id, s.span_id))
        node = SpanNode(s, depth)
        for c in children.get((s.trace_id, s.span_id), []):
            if (c.trace_id, c.span_id) not in seen:
                node.children.append(build(c, depth + 1))
        return node

    out = [build(r, 0) for r in roots]
    # Spans on a parent cycle (corrupt input) are reachable from no root: show them as roots.
    for s in rows:
        if (s.trace_id, s.span_id) not in seen:
            out.append(build(s, 0))
    out.sort(key=lambda n: (n.span.start_ts, n.span.end_ts, n.span.span_id))
    return out


def iter_tree(nodes: Iterable[SpanNode]) -> Iterator[SpanNode]:
    """Depth-first, pre-order walk (parents before children, siblings by start time)."""
    stack = list(reversed(list(nodes)))
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.children))
