"""LruStore: entries kept across generations, least recently used out first, by count and by bytes."""

import pytest
import torch
from forecache.core.lru_store import LruStore
from forecache.core.storage import nbytes


def test_the_least_recently_used_entry_goes_first_by_count_and_by_bytes():
    store = LruStore("test", max_entries=2, max_bytes=100)
    store.put("a", 1, 40)
    store.put("b", 2, 40)
    assert store.get("a") == 1  # now b is the least recently used
    store.put("c", 3, 10)  # three entries: b goes
    assert store.keys() == ["a", "c"] and store.bytes == 50 and store.evictions == 1
    store.put("d", 4, 90)  # 140 bytes in three entries: a goes, and 100 bytes fit
    assert store.keys() == ["c", "d"] and store.bytes == 100 and store.evictions == 2
    store.put("d", 5, 20)  # replacing an entry counts its new size only
    assert store.get("d") == 5 and store.stats() == {"entries": 2, "bytes": 30, "evictions": 2}
    assert store.pop("d") == 5 and store.pop("d") is None and store.bytes == 10 and store.get("d") is None


def test_a_value_larger_than_the_budget_and_bad_limits_are_errors():
    store = LruStore("PrefixStore", max_entries=4, max_bytes=10)
    with pytest.raises(ValueError, match="PrefixStore: a prefix takes 11 bytes, more than max_bytes=10; raise "
                                         "max_bytes or lower prefix_length"):
        store.put("x", None, 11, "a prefix", "lower prefix_length")
    with pytest.raises(ValueError, match="max_entries"):
        LruStore("test", max_entries=0)
    with pytest.raises(ValueError, match="max_bytes"):
        LruStore("test", max_entries=1, max_bytes=0)
    assert nbytes([torch.zeros(3, dtype=torch.float16), None, torch.zeros(2)]) == 3 * 2 + 2 * 4
