"""The runtime's own Python work per model call: a deterministic count, so it may be asserted.

Issue 19 asked the per-layer presets to make at most a third of the calls they made before the
batched, lean decision path (taylorseer 845 calls per model call on this toy, batch 1, 12 steps;
hicache 877; foca 826). TeaCache's block span is held to what the lean path reached.
"""

import pytest

import forecache.core as fc
from forecache.core.testing.overhead import calls_per_model_call, count_calls


@pytest.mark.parametrize("name, before", [("taylorseer", 845), ("hicache", 877), ("foca", 826)])
def test_per_layer_presets_make_a_third_of_the_calls_they_made(name, before):
    assert calls_per_model_call(name) <= before / 3


def test_a_block_span_stays_lean():
    # 183 before the lean path, 102 after it, 89 without binding each block call
    assert calls_per_model_call("teacache") <= 90


def test_count_calls_counts_forecache_frames_only():
    _, none = count_calls(lambda: sum(range(100)))
    _, some = count_calls(lambda: fc.Policy(where=fc.Blocks(), when=fc.triggers.Interval(2)))
    assert none == 0 and some > 0
