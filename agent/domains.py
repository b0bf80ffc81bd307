"""Which energy domains add up to a node's CPU-side energy."""

from __future__ import annotations

from collections.abc import Iterable


def primary_domains(domains: Iterable[str]) -> list[str]:
    """Domains that do not overlap and together make the node's CPU-side energy."""
    ds = list(domains)
    packages = [d for d in ds if d.startswith("package") and "/" not in d]
    if packages:
        return sorted(packages)
    if "psys" in ds:
        return ["psys"]
    return sorted(d for d in ds if "/" not in d and not d.startswith("mmio:"))
