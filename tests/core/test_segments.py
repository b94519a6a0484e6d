"""The clock beyond one schedule: segments, per-frame timesteps, must-compute calls, noise levels."""

import pytest
import torch

import forecache.core as fc
from forecache.core.forecasters import Reuse
from forecache.core.triggers import Interval


class Echo(torch.nn.Module):
    """Returns its input: a chunk fed a constant input outputs that constant at every step."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, hidden_states, timestep):
        return hidden_states + 0.0 * self.lin(hidden_states)


def rollout(model, handle, chunks=3, steps=5, announce=True):
    """An autoregressive loop: every chunk runs the same schedule again on its own input."""
    outs = []
    for c in range(chunks):
        if announce:
            handle.next_segment(c)
        x = torch.full((1, 4), 100.0 * (c + 1))
        outs.append([model(x, torch.tensor([t])) for t in torch.linspace(1.0, 0.1, steps).tolist()])
    return outs


def test_chunks_whose_timesteps_restart_keep_one_generation():
    model = Echo()
    handle = fc.apply(model, fc.Policy(where=fc.ModelOutput(), when=Interval(3)), fc.Adapter())
    rollout(model, handle)
    assert handle.stats().generations == 1
    trace = handle.trace()
    assert {d.generation for d in trace} == {0} and {d.segment for d in trace} == {0, 1, 2}
    assert [d.step for d in trace if d.segment == 2] == list(range(5))  # steps count within the segment
    handle.remove()
    handle = fc.apply(model, fc.Policy(where=fc.ModelOutput(), when=Interval(3)), fc.Adapter())
    rollout(model, handle, announce=False)  # unannounced, a restarting schedule is a new generation
    assert handle.stats().generations == 3
    handle.remove()


def test_a_site_keyed_by_segment_forecasts_each_chunk_from_its_own_history():
    model = Echo()
    own = fc.Policy(where=fc.ModelOutput(key=fc.by_segment), when=Interval(3), what=Reuse())
    handle = fc.apply(model, own, fc.Adapter())
    outs = rollout(model, handle)
    cached = [d for d in handle.trace() if not d.computed]
    assert {d.segment for d in cached} == {0, 1, 2}  # every chunk reuses
    for c, chunk in enumerate(outs):
        for out in chunk:  # every output, computed or reused, is the chunk's own
            assert torch.equal(out, torch.full((1, 4), 100.0 * (c + 1)))
    handle.remove()
    # keyed by row alone, a chunk's first step reuses the chunk before it
    handle = fc.apply(model, own.replace(where=fc.ModelOutput()), fc.Adapter())
    outs = rollout(model, handle)
    assert torch.equal(outs[1][0], torch.full((1, 4), 100.0))
    handle.remove()


def test_explicit_steps_name_their_segment():
    model = Echo()
    handle = fc.apply(model, fc.Policy(where=fc.ModelOutput(key=fc.by_segment), when=Interval(2)), fc.Adapter())
    x = torch.ones(2, 4)
    for block in ("a", "b"):
        for t in (1.0, 0.5, 0.2):
            handle.step(t, segment=block)
            model(x, None)
    trace = handle.trace()
    assert handle.stats().generations == 1
    assert [(d.segment, d.step, d.computed) for d in trace if d.row == 0] == [
        ("a", 0, True), ("a", 1, False), ("a", 2, True), ("b", 0, True), ("b", 1, False), ("b", 2, True)
    ]
    handle.remove()


def test_per_frame_timesteps_key_the_clock_on_their_mean_and_reach_sites_whole():
    model, seen = Echo(), []

    def key(ctx, r):
        seen.append(ctx.time)
        return fc.by_row(ctx, r)

    handle = fc.apply(model, fc.Policy(where=fc.ModelOutput(key=key), when=Interval(2)), fc.Adapter())
    frames = torch.tensor([0.0, 0.5, 1.0])
    for shift in (0.0, -0.2, -0.4):
        model(torch.ones(2, 4), (frames + shift).clamp_min(0).expand(2, 3))
    trace = handle.trace()
    assert [d.step for d in trace if d.row == 0] == [0, 1, 2]
    assert trace[0].t == pytest.approx(0.5)
    assert seen[0].shape == (2, 3)
    with pytest.raises(NotImplementedError, match="per-frame"):
        model(torch.ones(2, 4), torch.tensor([[0.3, 0.2], [0.1, 0.0]]))
    handle.remove()


def test_a_must_compute_call_runs_uncached_and_is_no_step():
    model = Echo()
    handle = fc.apply(model, fc.Policy(where=fc.ModelOutput(), when=Interval(3)), fc.Adapter())
    x = torch.ones(1, 4)
    for t in (1.0, 0.8, 0.6):
        model(x, torch.tensor([t]))
        with handle.must_compute():  # a clean pass that would fill a KV cache
            assert torch.equal(model(x * 2, torch.tensor([0.0])), x * 2)
    trace = handle.trace()
    assert [d.step for d in trace] == [0, 1, 2] and [d.computed for d in trace] == [True, False, False]
    assert handle.stats().generations == 1 and handle.stats().calls == 6
    handle.remove()

    class PrefixAdapter(fc.Adapter):
        def must_compute(self, model, args, kwargs):
            return args[1] is None  # this model's prefix pass carries no timestep

    handle = fc.apply(model, fc.Policy(where=fc.ModelOutput(), when=Interval(3)), PrefixAdapter())
    model(x, None)
    model(x, torch.tensor([1.0]))
    assert [d.step for d in handle.trace()] == [0]
    handle.remove()


def test_windows_read_the_adapters_noise_level():
    class FromNoiseAtZero(fc.Adapter):
        def noise_level(self, t):
            return 1.0 - t  # F5-TTS's flow time: noise at 0, data at 1

    model = Echo()
    policy = fc.Policy(where=fc.ModelOutput(window=(0.5, 1.0)), when=Interval(2))
    handle = fc.apply(model, policy, FromNoiseAtZero())
    for t in torch.linspace(0.0, 0.9, 10).tolist():
        model(torch.ones(1, 4), torch.tensor([t]))
    window = [d.step for d in handle.trace() if d.action == "window"]
    assert window == [6, 7, 8, 9]  # the late steps, near the data, compute
    handle.remove()


def test_segment_start_computes_at_each_segments_first_step_only():
    model = Echo()
    policy = fc.Policy(where=fc.ModelOutput(), when=fc.triggers.SegmentStart())
    handle = fc.apply(model, policy, fc.Adapter())
    outs = rollout(model, handle)
    assert [(d.segment, d.step) for d in handle.trace() if d.computed] == [(0, 0), (1, 0), (2, 0)]
    for c, chunk in enumerate(outs):  # a history per row is enough: each chunk's first step refreshes it
        assert all(torch.equal(out, torch.full((1, 4), 100.0 * (c + 1))) for out in chunk)
    handle.remove()
