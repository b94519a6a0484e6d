"""BlockIO reads a block call's state arguments without binding the call, and binds when it must."""

import inspect

import pytest
import torch
from forecache.core.adapters.base import BlockIO


def forward(hidden_states, temb=None, *, encoder_hidden_states=None, scale=1.0):
    return hidden_states


def test_state_is_read_by_position_or_keyword_and_missing_state_asks_for_a_bind():
    io = BlockIO(state=("hidden_states", "encoder_hidden_states"), returns=("encoder_hidden_states", "hidden_states"))
    where = io.locate(inspect.signature(forward))
    assert where == (("hidden_states", 0), ("encoder_hidden_states", -1))  # the second is keyword-only
    x, e = torch.zeros(1), torch.ones(1)
    assert io.find_state(where, (x,), {"encoder_hidden_states": e}) == (x, e)
    assert io.find_state(where, (), {"hidden_states": x, "encoder_hidden_states": e}) == (x, e)
    assert io.find_state(where, (x,), {}) is None  # not passed: binding the call says which one
    with pytest.raises(TypeError, match=r"block call has no argument \['encoder_hidden_states'\]"):
        io.bind(forward, (x,), {})


def test_a_signature_that_hides_the_state_is_bound():
    def wrapped(*args, **kwargs):
        return args[0]

    assert BlockIO().locate(inspect.signature(wrapped)) is None
