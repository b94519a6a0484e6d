"""The runtime contract: rows, branches, the clock, health checks, bad input, memory, telemetry."""

import json

import pytest
import torch

import forecache.core as fc
from forecache.core.forecasters import Forecaster
from forecache.core.storage import Storage
from forecache.core.testing.toy import ToyAdapter, ToyTransformer, sample, toy_inputs
from forecache.core.triggers import Interval
from forecache.core.triggers.base import Trigger

from .conftest import STEPS


class LoudTrigger(Trigger):
    """Rows whose signal is loud (mean |x| above ``cut``) compute at every step; the others every
    third step. Rows of one batch thus decide differently."""

    signal = "input"

    def __init__(self, cut):
        self.cut = cut

    def decide(self, state, obs, metric):
        return bool(obs.signal.abs().mean() > self.cut) or obs.since_compute >= 3


def test_rows_decide_independently_and_match_their_standalone_run(toy, adapter):
    a = toy_inputs(batch=1, seed=1)
    b = toy_inputs(batch=1, seed=2)
    b["hidden_states"] = b["hidden_states"] * 50  # a loud row
    batch = {k: torch.cat([a[k], b[k]]) for k in a}
    quiet, loud = (toy.x_in(x["hidden_states"]).abs().mean().item() for x in (a, b))
    # the last: a whole-output site runs the model on the rows it does not forecast, and the blocks
    # inside must keep those rows' histories under their rows of the whole batch
    for selector in (fc.Blocks(), fc.Submodules(("attn", "mlp")), [fc.ModelOutput(), fc.Blocks()]):
        policy = fc.Policy(where=selector, when=LoudTrigger((quiet * loud) ** 0.5))
        handle = fc.apply(toy, policy, adapter)
        together = sample(toy, batch, STEPS)
        actions = {(d.site, d.step, d.row): d.computed for d in handle.trace()}
        handle.remove()
        assert any(actions[k] != actions[(*k[:2], 1)] for k in actions if k[2] == 0), "rows never disagreed"
        for row, alone_inputs in ((0, a), (1, b)):
            handle = fc.apply(toy, policy, adapter)
            alone = sample(toy, alone_inputs, STEPS)
            handle.remove()
            torch.testing.assert_close(together[row : row + 1], alone, rtol=1e-5, atol=1e-6)


def test_cfg_as_two_calls_keeps_a_state_per_branch(toy, inputs, adapter):
    handle = fc.apply(toy, fc.teacache(0.2), adapter)
    sample(toy, inputs, STEPS, guidance=3.0)
    branches = {d.branch for d in handle.trace()}
    assert branches == {0, 1}
    assert len(handle.sites[0]._rows) == 4  # 2 branches x 2 rows
    handle.remove()


def test_a_second_generation_restarts_by_itself(toy, inputs, adapter):
    handle = fc.apply(toy, fc.fora(interval=3), adapter)
    first = sample(toy, inputs, STEPS)
    second = sample(toy, inputs, STEPS)
    assert torch.equal(first, second)
    assert handle.stats().generations == 2
    assert {d.generation for d in handle.trace()} == {0, 1}
    handle.remove()


def test_explicit_step_clock():
    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, hidden_states):
            return hidden_states + self.lin(hidden_states)

    class NoTime(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList(Residual() for _ in range(3))

        def forward(self, hidden_states):
            for b in self.blocks:
                hidden_states = b(hidden_states)
            return hidden_states

    model, x = NoTime(), torch.randn(1, 4)
    handle = fc.apply(model, fc.fora(interval=2).replace(where=fc.Blocks()), fc.Adapter())
    with pytest.raises(ValueError, match="handle.step"):
        model(x)
    for t in (1.0, 0.5, 0.25, 0.1):
        handle.step(t)
        model(x)
    assert [d.computed for d in handle.trace()] == [True, False, True, False]
    handle.remove()


class NaNAfterTwo(Forecaster):
    min_history = 1
    max_history = 1

    def predict(self, times, values, t, state):
        return torch.full_like(values[-1], float("nan"))


def test_nonfinite_forecast_recomputes_and_is_recorded(toy, inputs, adapter):
    ref = sample(toy, inputs, STEPS)
    handle = fc.apply(toy, fc.Policy(where=fc.Blocks(), when=Interval(3), what=NaNAfterTwo()), adapter)
    out = sample(toy, inputs, STEPS)
    assert torch.equal(out, ref)
    assert handle.stats().nonfinite_recomputes > 0
    assert any(d.action == "nonfinite" for d in handle.trace())
    handle.remove()


def test_hooks_that_never_fire_are_an_error(toy, inputs):
    class Elsewhere(ToyAdapter):
        block_attrs = ("unused",)

    toy.unused = torch.nn.ModuleList([torch.nn.Identity()])
    handle = fc.apply(toy, fc.fora().replace(where=fc.Blocks()), Elsewhere())
    with pytest.raises(RuntimeError, match="without reaching any cached site"):
        sample(toy, inputs, STEPS)
    handle.remove()


def test_second_apply_on_the_same_module_is_an_error(toy, adapter):
    handle = fc.apply(toy, fc.teacache(), adapter)
    with pytest.raises(ValueError, match="already cached"):
        fc.apply(toy, fc.fora(), adapter)
    handle.remove()
    fc.apply(toy, fc.fora(), adapter).remove()  # fine once removed


def test_two_handles_on_two_models_do_not_interact(inputs, adapter):
    torch.manual_seed(0)
    m1, m2 = ToyTransformer().eval(), ToyTransformer().eval()
    ref1 = sample(m1, inputs, STEPS)
    h1 = fc.apply(m1, fc.fora(interval=1), adapter)
    h2 = fc.apply(m2, fc.fora(interval=4), adapter)
    out1 = sample(m1, inputs, STEPS)
    sample(m2, inputs, STEPS)
    assert torch.equal(out1, ref1)
    assert h1.stats().hit_rate == 0 and h2.stats().hit_rate > 0
    h1.remove()
    h2.remove()


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: fc.fora(interval=0), "interval"),
        (lambda: fc.teacache(threshold=-1), "threshold"),
        (lambda: fc.taylorseer(order=-1), "order"),
        (lambda: fc.hicache(sigma=0), "sigma"),
        (lambda: fc.Policy(where="blocks", when=Interval(2)), "where"),
        (lambda: fc.Policy(where=fc.Blocks(), when=Interval(2), storage_dtype=torch.int8), "storage_dtype"),
        (lambda: fc.Policy(where=fc.Blocks(), when=Interval(2), max_cache_bytes=0), "max_cache_bytes"),
        (lambda: fc.Policy(where=fc.Submodules(("attention",)), when=Interval(2)), "roles"),
        (lambda: fc.dbcache(fn=-1), "probe"),
        (lambda: fc.Policy(where=fc.Blocks(window=(0.8, 0.2)), when=Interval(2)), "window"),
    ],
)
def test_bad_config_names_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_span_that_leaves_nothing_to_cache_is_an_error(toy, adapter):
    with pytest.raises(ValueError, match="nothing to cache"):
        fc.apply(toy, fc.dbcache(fn=4), adapter)
    assert all("forward" not in m.__dict__ for m in toy.modules())


def test_byte_budget_raises_a_clear_error(toy, inputs, adapter):
    handle = fc.apply(toy, fc.taylorseer(max_cache_bytes=10_000), adapter)
    with pytest.raises(fc.CacheBudgetError, match="max_cache_bytes"):
        sample(toy, inputs, STEPS)
    handle.remove()


def test_storage_dtype_halves_the_cache(toy, inputs, adapter):
    peaks = {}
    for dtype in (None, torch.bfloat16):
        handle = fc.apply(toy, fc.taylorseer(storage_dtype=dtype), adapter)
        sample(toy, inputs, STEPS)
        peaks[dtype] = handle.stats().peak_cache_bytes
        handle.remove()
    assert peaks[torch.bfloat16] * 2 == peaks[None]


def test_crf_keeps_one_feature_per_row_whatever_the_depth(inputs, adapter):
    """FreqCa's CRF: the cache of a block-stack residual does not grow with depth; per-layer
    caching does."""
    peaks = {}
    for depth in (2, 6):
        torch.manual_seed(0)
        model = ToyTransformer(depth=depth).eval()
        for crf in (True, False):
            handle = fc.apply(model, fc.freqca(crf=crf), adapter)
            sample(model, inputs, STEPS)
            peaks[depth, crf] = handle.stats().peak_cache_bytes
            handle.remove()
    assert peaks[2, True] == peaks[6, True]
    assert peaks[6, False] == 3 * peaks[2, False]


def test_trace_and_stats_export(toy, inputs, adapter, tmp_path):
    handle = fc.apply(toy, fc.teacache(0.3), adapter)
    sample(toy, inputs, STEPS)
    records = json.loads(handle.trace().to_json(tmp_path / "trace.json"))
    assert len(records) == len(STEPS) * 2  # one site, two rows
    assert {"step", "branch", "row", "site", "action", "metric", "t"} <= set(records[0])
    assert records[1]["metric"] is not None or records[0]["metric"] is None
    stats = handle.stats().as_dict()
    assert 0 < stats["compute_ratio"] < 1 and stats["peak_cache_bytes"] > 0
    assert "compute ratio" in str(handle.stats())
    handle.clear_telemetry()
    assert handle.stats().calls == 0 and len(handle.trace()) == 0
    handle.remove()


def test_pipeline_schedule_is_learnt_from_the_scheduler(toy, inputs, adapter):
    """apply() on a pipeline watches scheduler.set_timesteps, maps the schedule to the model's
    units by the first step, and so serves cool-down windows without set_schedule()."""

    class Scheduler:
        def set_timesteps(self, n, device=None, sigmas=None):
            self.timesteps = torch.linspace(1000, 50, n)

    class Pipe:
        def __init__(self):
            self.transformer, self.scheduler = toy, Scheduler()

        def __call__(self, n):
            self.scheduler.set_timesteps(n, sigmas=None)
            return sample(self.transformer, inputs, self.scheduler.timesteps / 1000)

    import inspect

    pipe = Pipe()
    handle = fc.apply(pipe, fc.fora(interval=3).replace(when=Interval(3, warmup=1, cooldown=2)), adapter)
    assert "sigmas" in inspect.signature(pipe.scheduler.set_timesteps).parameters
    pipe(10)
    computed = [d.computed for d in handle.trace() if d.row == 0 and d.site == handle.sites[0].name]
    assert computed[-2:] == [True, True] and not all(computed)
    handle.remove()
    assert "set_timesteps" not in pipe.scheduler.__dict__


def sample_batched_cfg(model, inputs, guidance=3.0):
    """CFG as one call over [uncond; cond] rows, as diffusers pipelines batch it."""
    x, ctx = inputs["hidden_states"], inputs["encoder_hidden_states"]
    ts = [float(t) for t in STEPS] + [0.0]
    with torch.no_grad():
        for t, t_next in zip(ts[:-1], ts[1:]):
            both = model(
                hidden_states=torch.cat([x, x]),
                encoder_hidden_states=torch.cat([torch.zeros_like(ctx), ctx]),
                timestep=torch.full((2 * x.shape[0],), t),
            )
            v_u, v_c = both.chunk(2)
            x = x + (t_next - t) * (v_u + guidance * (v_c - v_u))
    return x


def test_cfg_cache_in_one_batched_call(toy, adapter):
    """FasterCache's CFG-Cache with the batch layout: at cached steps only the cond rows run."""
    inputs = toy_inputs(batch=1)
    ref = sample_batched_cfg(toy, inputs)
    never = fc.fastercache(attention_interval=1, uncond_interval=1, cfg_layout="batched", uncond=0)
    handle = fc.apply(toy, never, adapter)
    assert torch.equal(sample_batched_cfg(toy, inputs), ref)
    handle.remove()
    policy = fc.fastercache(attention_interval=1, uncond_interval=3, cfg_layout="batched", uncond=0,
                            uncond_window=(0.0, 1.0))
    handle = fc.apply(toy, policy, adapter)
    out = sample_batched_cfg(toy, inputs)
    uncond = [d for d in handle.trace() if d.site == "cfg.uncond"]
    assert [d.computed for d in uncond] == [True, False, False] * 4
    assert handle.stats().compute_ratio < 0.8  # an uncond row skipped is half of that call
    rel = float((out - ref).norm() / ref.norm())
    assert 0 < rel < 0.2
    handle.remove()


def test_storage_adopts_without_a_copy_and_counts_the_bytes():
    storage = Storage(max_bytes=1000)
    x = torch.ones(10, 10)  # 400 bytes
    (kept,) = storage.adopt([x])
    assert kept.data_ptr() == x.data_ptr() and storage.bytes == 400
    with pytest.raises(fc.CacheBudgetError):
        storage.adopt([torch.ones(10, 10), torch.ones(10, 10)])  # 800 more: over the budget, none kept
    assert storage.bytes == 400 and storage.peak_bytes == 400
    half = Storage(dtype=torch.bfloat16)
    assert half.adopt([x])[0].dtype == torch.bfloat16 and half.bytes == 200
