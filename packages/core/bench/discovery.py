"""Finding benchmarks: each domain registers a factory under the `forecache.benchmarks` entry
point group (name = domain), so core never names a domain."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

from .protocol import ENTRY_POINT_GROUP, Benchmark


def domains() -> dict[str, Callable[[], list[Benchmark]]]:
    """Installed domains and the factories returning their benchmarks."""
    return {ep.name: ep.load for ep in entry_points(group=ENTRY_POINT_GROUP)}


def benchmarks(domain: str) -> list[Benchmark]:
    found = domains()
    if domain == "all":
        return [b for name in sorted(found) for b in found[name]()()]
    if domain not in found:
        raise ValueError(
            f"no benchmarks registered for domain {domain!r}; installed: {sorted(found) or 'none'} "
            f"(domains register a factory under the {ENTRY_POINT_GROUP!r} entry point group)"
        )
    return list(found[domain]()())
