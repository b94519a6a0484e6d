"""Entries kept across generations under a key, least recently used out first, by count and by bytes.

A cache that outlives one generation (a prompt prefix shared by requests, the features of a camera pose and
timestep reused across views) keeps what it computed under a key and evicts what was used least recently when it
holds too many entries or too many bytes. A handle's :class:`~forecache.core.storage.Storage` refuses to grow past
its budget instead (a generation's cache is all needed); this store makes room.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

from .validation import check_int

__all__ = ["LruStore"]


class LruStore:
    """Values under hashable keys, at most ``max_entries`` of them and ``max_bytes`` bytes in all (None: no byte
    budget); storing past either evicts the least recently used entries, and a value larger than the whole byte
    budget is a ValueError naming ``who``'s knob."""

    def __init__(self, who: str, max_entries: int, max_bytes: int | None = None) -> None:
        check_int(who, "max_entries", max_entries, 1, "16 by default")
        if max_bytes is not None:
            check_int(who, "max_bytes", max_bytes, 1, "or None for no budget")
        self.who, self.max_entries, self.max_bytes = who, max_entries, max_bytes
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self.bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def keys(self) -> list[Hashable]:
        """The keys, least recently used first."""
        return list(self._entries)

    def get(self, key: Hashable) -> Any:
        """The value under ``key``, now the most recently used; None when there is none."""
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        return found[0]

    def check_fits(self, size: int, what: str = "an entry", fix: str = "store less") -> None:
        """A ValueError when ``size`` bytes exceed the byte budget on their own; the message names ``what`` was
        stored and, besides raising ``max_bytes``, the ``fix``."""
        if self.max_bytes is not None and size > self.max_bytes:
            raise ValueError(f"{self.who}: {what} takes {size} bytes, more than max_bytes={self.max_bytes}; raise "
                             f"max_bytes or {fix}")

    def put(self, key: Hashable, value: Any, size: int, what: str = "an entry", fix: str = "store less") -> None:
        """Store ``value`` (``size`` bytes) under ``key``, replacing what was there, as the most recently used; evict
        the least recently used entries past ``max_entries`` or the byte budget (``what``, ``fix``: as in
        :meth:`check_fits`)."""
        self.check_fits(size, what, fix)
        self.pop(key)
        self._entries[key] = (value, size)
        self.bytes += size
        while len(self._entries) > self.max_entries or (self.max_bytes is not None and self.bytes > self.max_bytes):
            _, (_, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped
            self.evictions += 1

    def pop(self, key: Hashable) -> Any:
        """Remove and return the value under ``key`` (None when there is none)."""
        found = self._entries.pop(key, None)
        if found is None:
            return None
        self.bytes -= found[1]
        return found[0]

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def stats(self) -> dict[str, int]:
        return {"entries": len(self._entries), "bytes": self.bytes, "evictions": self.evictions}
