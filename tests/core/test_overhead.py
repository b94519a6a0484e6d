"""The runtime's own Python work per model call: a deterministic count, so it may be asserted.

Issue 19 asked the per-layer presets to make at most a third of the calls they made before the
batched, lean decision path (taylorseer 845 calls per model call on this toy, batch 1, 12 steps;
hicache 877; foca 826). TeaCache's block span is held to what the lean path reached.
"""

import pytest
import torch

import forecache.core as fc
from forecache.core.testing.overhead import count_calls
from forecache.core.testing.toy import ToyAdapter, ToyTransformer, sample, toy_inputs

from .conftest import STEPS


def calls_per_model_call(preset, batch=1):
    torch.manual_seed(0)
    model, inputs = ToyTransformer().eval(), toy_inputs(batch=batch)
    handle = fc.apply(model, preset, ToyAdapter(), count_flops=False)
    sample(model, inputs, STEPS)  # the first generation sizes the caches
    _, calls = count_calls(lambda: sample(model, inputs, STEPS))
    handle.remove()
    return calls / len(STEPS)


@pytest.mark.parametrize("name, before", [("taylorseer", 845), ("hicache", 877), ("foca", 826)])
def test_per_layer_presets_make_a_third_of_the_calls_they_made(name, before):
    assert calls_per_model_call(getattr(fc, name)()) <= before / 3


def test_a_block_span_stays_lean():
    assert calls_per_model_call(fc.teacache()) <= 110


def test_count_calls_counts_forecache_frames_only():
    _, none = count_calls(lambda: sum(range(100)))
    _, some = count_calls(lambda: fc.Policy(where=fc.Blocks(), when=fc.triggers.Interval(2)))
    assert none == 0 and some > 0
