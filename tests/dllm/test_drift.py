"""Drift-triggered response refresh for dLLM-Cache (our option on arXiv 2506.06295) and its calibration."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from forecache.dllm.dllm_cache import DllmCache
from forecache.dllm.drift import row_drift, step_drift
from forecache.dllm.drift_calibration import calibrate_drift
from forecache.dllm.model import LLaDAModel
from forecache.dllm.sampler import generate, pad_prompts

from .tiny import MASK, tiny_llada

RUN = {"steps": 12, "gen_length": 12, "block_length": 6}


pytestmark = pytest.mark.usefixtures("no_grad")  # threads: conftest's one_thread


def tiny_model(n_layers: int = 3, seed: int = 0) -> LLaDAModel:
    return tiny_llada(n_layers, seed)


@pytest.fixture(scope="module")
def model() -> LLaDAModel:
    return tiny_model()


def drift_policy(threshold: float, **kw) -> DllmCache:
    return DllmCache(**{"prompt_interval": 5, "rho": 0.25, "response_refresh": "drift",
                        "drift_threshold": threshold, **kw})


def test_row_and_step_drift_by_hand():
    sim = torch.tensor([[1.0, 0.5, -1.0], [0.9, float("nan"), 1.0]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    assert row_drift(sim, valid).tolist() == [0.25, math.inf]  # the pad (-1) does not count; NaN is infinite
    assert row_drift(sim[:1], None).tolist() == [pytest.approx(2.5 / 3)]
    layer_a, layer_b = torch.tensor([0.1, 0.4], dtype=torch.float64), torch.tensor([0.3, 0.0], dtype=torch.float64)
    assert step_drift([layer_a, layer_b]) == pytest.approx(0.2)  # mean over layers (0.2, 0.2), max over rows


P, R, N = 2, 6, 10  # prompt, answer, model calls of the constructed sequence


def constructed():
    """One layer and its inputs at N calls: the answer's inputs move along a fixed random direction."""
    model = tiny_model(n_layers=1, seed=5)
    x = torch.tensor([[4, 5] + [MASK] * R])
    torch.manual_seed(1)
    delta = torch.zeros(1, P + R, 32)
    delta[:, P:] = 0.1 * torch.randn(1, R, 32)
    return model, x, [model.wte(x) + s * delta for s in range(N)]


def by_hand(model, inputs, threshold: float, accumulate: bool):
    """The refresh calls and (call, drift, accumulated) trace, from the layer's own value projection."""
    layer = model.blocks[0]

    def values(e):  # (1, R, Hkv * hd)
        return layer.project_v(layer.attn_norm(e[:, P:])).transpose(1, 2).flatten(2)

    ref, acc, due, refresh, trace = inputs[0], 0.0, False, [0], []
    for s in range(1, N):
        if due:
            refresh.append(s)
            ref, acc, due = inputs[s], 0.0, False
            continue
        d = float((1 - torch.cosine_similarity(values(inputs[s]), values(ref), dim=-1)).mean())
        acc = d + (acc if accumulate else 0.0)
        trace.append((s, d, acc))
        due = acc > threshold
    return refresh, trace


@pytest.mark.parametrize("threshold, accumulate, expected", [
    (0.02, True, [0, 3, 6]),
    (0.02, False, [0, 3, 7]),
    (0.05, True, [0, 4, 8]),
    (0.05, False, [0, 4, 9]),
])
def test_drift_refresh_fires_exactly_when_the_drift_crosses_the_threshold(threshold, accumulate, expected):
    model, x, inputs = constructed()
    layer = model.blocks[0]
    cos, sin = model.rope(model.positions(x, None))
    key_mask = torch.ones(1, 1, 1, P + R, dtype=torch.bool)
    policy = DllmCache(prompt_interval=100, rho=0.0, response_refresh="drift", drift_threshold=threshold,
                       drift_accumulate=accumulate)
    state = policy.start(model, P, R, R)
    for s, e in enumerate(inputs):
        state.runner(x, s, 0)(0, layer, e, cos, sin, key_mask)
    stats = state.stats()
    refresh, trace = by_hand(model, inputs, threshold, accumulate)
    assert refresh == expected  # the constructed sequence does cross, at these calls
    assert all(abs(acc - threshold) > 1e-4 for _, _, acc in trace)  # no decision is up to rounding
    assert stats["response_refresh_steps"] == refresh
    assert [s for s, _, _ in stats["drift"]] == [s for s, _, _ in trace]
    for (_, d, acc), (_, d_hand, acc_hand) in zip(stats["drift"], trace):
        assert d == pytest.approx(d_hand, rel=1e-5, abs=1e-7) and acc == pytest.approx(acc_hand, rel=1e-5, abs=1e-7)
    # and the state's decisions follow its own reported drift exactly
    assert stats["response_refresh_steps"] == [0] + [s + 1 for s, _, acc in stats["drift"] if acc > threshold
                                                     and s + 1 < N]


def test_a_nan_drift_refreshes_the_next_call():
    model, x, inputs = constructed()
    layer = model.blocks[0]
    cos, sin = model.rope(model.positions(x, None))
    key_mask = torch.ones(1, 1, 1, P + R, dtype=torch.bool)
    state = DllmCache(100, rho=0.0, response_refresh="drift", drift_threshold=1e9).start(model, P, R, R)
    inputs[2][0, P + 1] = float("nan")
    for s in range(4):
        state.runner(x, s, 0)(0, layer, inputs[s], cos, sin, key_mask)
    assert state.stats()["response_refresh_steps"] == [0, 3]
    assert state.stats()["drift"][1][1] == math.inf


@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_drift_decisions_through_the_sampler(model, cfg_scale):
    ids, mask = pad_prompts([[5, 9, 2, 17, 30], [8, 1, 44]], pad_id=0)

    def run(policy):
        return generate(model, ids, mask, cache=policy, cfg_scale=cfg_scale, return_stats=True, **RUN)

    for threshold in (0.1, 0.15, 0.3):
        _, stats = run(drift_policy(threshold))
        s = stats["cache"]
        assert s["response_refresh_steps"] == [0] + [c + 1 for c, _, acc in s["drift"] if acc > threshold and c < 11]
        assert len(s["response_refresh_steps"]) > 1  # the tiny model does drift past these
    # threshold 0: every measured call triggers, so the answer is refreshed every other call
    _, stats = run(drift_policy(0.0))
    assert stats["cache"]["response_refresh_steps"] == list(range(0, 12, 2))
    # an infinite threshold never refreshes after the first call: the paper's rule with K_r past the run
    never, stats_never = run(drift_policy(math.inf))
    interval, stats_interval = run(DllmCache(5, 1000, 0.25))
    assert torch.equal(never, interval)
    assert stats_never["cache"]["response_refresh_steps"] == [0]
    assert stats_never["cache"]["compute_fraction"] == stats_interval["cache"]["compute_fraction"]


def test_drift_layer_measures_one_layer(model):
    ids, mask = pad_prompts([[5, 9, 2, 17, 30]], pad_id=0)
    _, stats = generate(model, ids, mask, cache=drift_policy(0.1, rho=0.0, drift_layer=2), return_stats=True, **RUN)
    s = stats["cache"]
    measured = len(s["drift"])  # one layer of 12 answer tokens on each measured call, and nothing else
    assert measured > 0 and s["v_verify_fraction"] == measured * 12 / (12 * 3 * 17)


BATCHES = [pad_prompts([[5, 9, 2, 17, 30], [8, 1, 44]], 0), pad_prompts([[3, 3, 40, 41]], 0)]
CAL = {"steps": 16, "gen_length": 16, "block_length": 4}


def fraction(model, policy):
    num = den = 0
    for ids, mask in BATCHES:
        _, stats = generate(model, ids, mask, cache=policy, return_stats=True, **CAL)
        num, den = num + stats["cache"]["computed"], den + stats["cache"]["token_layers"]
    return num / den


def test_calibration_reaches_a_target_fraction(model):
    base = DllmCache(50, 7, 0.25)
    target = fraction(model, drift_policy(0.3, prompt_interval=50))  # a fraction some threshold achieves
    result = calibrate_drift(model, BATCHES, target, policy=base, tolerance=0.02, start=0.01, **CAL)
    assert result.met and abs(result.fraction - target) <= 0.02
    assert 3 < len(result.probes) <= 8  # it had to bracket and bisect, within its budget of 16 generations
    assert result.threshold in dict(result.probes) and dict(result.probes)[result.threshold] == result.fraction
    assert result.policy == DllmCache(50, 7, 0.25, response_refresh="drift", drift_threshold=result.threshold)
    assert fraction(model, result.policy) == result.fraction  # the reported fraction is the policy's


def test_calibration_reports_an_unreachable_target(model, caplog):
    with caplog.at_level(logging.WARNING, logger="forecache"):
        low = calibrate_drift(model, BATCHES, 0.01, **CAL)
    assert not low.met and "no threshold reaches" in caplog.text
    # the cheapest run refreshes only at the first call: what an infinite threshold computes
    assert low.fraction == fraction(model, drift_policy(math.inf, prompt_interval=50))
    high = calibrate_drift(model, BATCHES, 0.99, **CAL)  # more than refreshing at every other call: met
    assert high.met and high.fraction == fraction(model, drift_policy(0.0, prompt_interval=50))
    assert len(high.probes) <= 3


@pytest.mark.parametrize("kwargs, message", [
    ({"target_compute_fraction": 1.0}, "target_compute_fraction"),
    ({"target_compute_fraction": 0.0}, "target_compute_fraction"),
    ({"metric": "speed"}, "metric"),
    ({"max_generations": 3}, "max_generations"),
    ({"tolerance": -0.1}, "tolerance"),
    ({"cache": DllmCache()}, "cache"),
    ({"batches": []}, "batches"),
])
def test_calibration_bad_arguments_raise(model, kwargs, message):
    args = {"batches": BATCHES, "target_compute_fraction": 0.3, **CAL, **kwargs}
    with pytest.raises(ValueError, match=message):
        calibrate_drift(model, **args)
