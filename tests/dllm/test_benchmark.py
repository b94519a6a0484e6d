"""`forecache bench dllm`: the task benchmarks on a tiny random LLaDA (wiring only; numbers need the trained model)."""

from __future__ import annotations

import json

import pytest
import torch
from forecache.core.bench import report, runner
from forecache.core.bench.protocol import Benchmark
from forecache.dllm.benchmark import (
    BENCHMARKS,
    Decoding,
    TaskBenchmark,
    benchmarks,
    decoding_method,
)
from forecache.dllm.checkpoint import save_llada
from forecache.dllm.combined import CombinedCache
from forecache.dllm.config import LLaDAConfig
from forecache.dllm.dllm_cache import DllmCache
from forecache.dllm.fast_dllm import FastDllmCache
from forecache.dllm.model import LLaDAModel
from forecache.dllm.reference.evaluate import GEN_LENGTH
from forecache.dllm.reference.vocab import EOS_ID, IDS, MASK_ID, TOKENS, save_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random LLaDA over the task vocabulary, saved as the reference model is (weights + tokenizer)."""
    torch.manual_seed(0)
    config = LLaDAConfig(d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=64,
                         vocab_size=len(TOKENS), embedding_size=len(TOKENS), max_sequence_length=512,
                         mask_token_id=MASK_ID)
    folder = tmp_path_factory.mktemp("llada-tiny")
    save_llada(LLaDAModel(config).eval(), folder)
    save_tokenizer(folder)
    return folder


def kv_bench(model_dir, n: int = 4) -> TaskBenchmark:
    return TaskBenchmark("kv-retrieval", ("kv",), (n, n), path=model_dir)


NEVER_SKIP = decoding_method("dllm_cache", {"K_p": 1, "K_r": 1, "rho": 0.0}, lambda: DllmCache(1, 1, 0.0))
CACHED = decoding_method("dllm_cache", {"K_p": 100, "K_r": 8, "rho": 0.0}, lambda: DllmCache(100, 8, 0.0))
FAST = decoding_method("fast_dllm", {"cache": "dual", "threshold": 0.9}, lambda: FastDllmCache(dual=True),
                       threshold=0.9)


def test_benchmarks_satisfy_the_protocol():
    from forecache.core.bench.discovery import benchmarks as discovered

    found = benchmarks()
    assert [b.name for b in discovered("dllm")] == [b.name for b in found]  # `forecache bench dllm` finds them
    assert all(isinstance(b, Benchmark) for b in found)
    assert [b.name for b in found] == ["kv-retrieval", "addition", "copy-reverse"] == list(BENCHMARKS)
    assert {b.model for b in found} == {"models/llada-tasks"} and all(b.domain == "dllm" for b in found)


def test_rows_are_the_briefed_grids_and_undo_leaves_no_policy_behind():
    full, quick = benchmarks()[0].methods(quick=False), benchmarks()[0].methods(quick=True)
    dllm = [m for m in full if m.name == "dllm_cache"]
    assert [(m.params["K_p"], m.params["K_r"], m.params["rho"]) for m in dllm[:-1]] == [
        (100, k, r) for k in (2, 4, 8) for r in (0.0, 0.25, 0.5)
    ]
    assert dllm[-1].params == {"K_p": 50, "K_r": 7, "rho": 0.25} and "paper default" in dllm[-1].note
    assert [m.label for m in full if m.name != "dllm_cache"] == [
        "fast_dllm_prefix_cache", "fast_dllm_dual_cache",
        *(f"parallel_decoding(threshold={t})" for t in (0.7, 0.8, 0.9)),
        *(f"fast_dllm(cache=dual,threshold={t})" for t in (0.7, 0.8, 0.9)),
        *(f"fast_dllm_cache(K_p={k},threshold={t})" for k in (4, 8, 16) for t in (0.7, 0.8, 0.9)),
    ]
    assert len(quick) == 5 + 4 + 1 and all(not m.peer for m in full + quick)
    decoding = Decoding()
    for method in full + quick:
        undo = method.enable(decoding, count_flops=False)
        policy = decoding.cache
        assert decoding.active
        if method.name == "dllm_cache":
            assert isinstance(policy, DllmCache) and decoding.options == {}
            assert (policy.prompt_interval, policy.response_interval, policy.rho) == tuple(method.params.values())
        else:
            threshold = method.params.get("threshold")
            assert decoding.options == ({"threshold": threshold} if threshold is not None else {})
            if method.name == "parallel_decoding":
                assert policy is None
            elif method.name == "fast_dllm_cache":
                method_ = policy.where.method  # the preset's core policy
                assert isinstance(method_, CombinedCache) and method_.prompt_interval == method.params["K_p"]
            else:
                assert isinstance(policy, FastDllmCache) and policy.dual == ("prefix" not in method.name)
        with pytest.raises(ValueError, match="already enabled"):
            method.enable(decoding)
        undo()
        undo()  # idempotent
        assert not decoding.active and decoding.cache is None and decoding.options == {}


def test_fidelity_and_accuracy_on_known_answers(model_dir):
    bench = TaskBenchmark("copy-reverse", ("copy", "reverse"), (3, 3), path=model_dir)
    bench.prepare(quick=True)
    assert [ex.task for ex in bench.examples] == ["copy", "reverse"] * 3
    # the right answers, <eos>-padded as the model is trained to write them
    right = torch.tensor([[IDS[w] for w in ex.answer.split()] + [EOS_ID] * (GEN_LENGTH - len(ex.answer.split()))
                          for ex in bench.examples])
    assert bench.metrics(right) == {"accuracy": 1.0, "accuracy_copy": 1.0, "accuracy_reverse": 1.0}
    wrong = right.clone()
    wrong[1, 0] = IDS["k00"]  # a reverse answer's first token
    wrong[2, -1] = IDS["a"]  # after the first <eos>: the answer is unchanged
    assert bench.metrics(wrong) == {"accuracy": 5 / 6, "accuracy_copy": 1.0, "accuracy_reverse": 2 / 3}
    assert bench.fidelity(wrong, right) == pytest.approx({
        "token_agreement": 1 - 2 / (6 * GEN_LENGTH), "sequence_agreement": 4 / 6, "answer_agreement": 5 / 6,
    }, rel=1e-12)
    assert bench.units(right) == 6 * GEN_LENGTH


def test_quick_run_writes_schema_2_with_per_token_numbers(model_dir, tmp_path, monkeypatch):
    bench = kv_bench(model_dir)
    monkeypatch.setattr(bench, "methods", lambda quick: [NEVER_SKIP, CACHED, FAST])
    result = runner.run_benchmark(bench, quick=True, repeats=1, progress=False)
    assert result["schema"] == 2 and result["domain"] == "dllm" and result["benchmark"] == "kv-retrieval"
    base, (never, cached, fast) = result["baseline"], result["runs"]
    tokens = 4 * GEN_LENGTH
    for row in (base, never, cached, fast):
        assert row["unit"] == "token" and row["units"] == tokens
        assert row["flops_per_unit"] == row["flops"] / tokens
        assert row["units_per_s"] == pytest.approx(tokens / row["wall_s"])
    # never-skip dLLM-Cache computes exactly what the uncached sampler computes
    assert never["fidelity"] == {"token_agreement": 1.0, "sequence_agreement": 1.0, "answer_agreement": 1.0}
    assert never["metrics"] == base["metrics"] and never["flops"] == base["flops"]
    assert never["stats"]["compute_fraction"] == 1.0 and never["stats"]["model_calls"] == 16
    # K_r = 8, rho = 0: two full steps of 16 (0 and 8); the prompt only at step 0
    assert cached["flops"] < base["flops"] / 4 and cached["speedup_flops"] > 4
    assert cached["stats"]["compute_fraction"] < 0.2 and cached["peak_cache_bytes"] > 0
    assert cached["peak_cache_bytes"] == cached["stats"]["peak_cache_bytes"]
    # DualCache: the first call of each 8-step block computes everything, the other calls the block alone; a
    # random model is never confident enough for the threshold, so it commits one token per call (16 calls)
    assert fast["stats"]["method"] == "fast_dllm_dual_cache" and fast["stats"]["model_calls"] == 16
    assert fast["flops"] < base["flops"] / 2 and fast["stats"]["compute_fraction"] < 0.25
    assert not bench.decoding.active  # the runner undid every method
    path = report.write(result, tmp_path)
    assert json.loads(path.read_text())["runs"][1]["params"] == {"K_p": 100, "K_r": 8, "rho": 0.0}
    md = path.with_suffix(".md").read_text()
    assert "| tokens/s | FLOPs/token |" in md and "| dllm_cache(K_p=100,K_r=8,rho=0.0) |" in md


def test_a_missing_or_foreign_model_says_what_to_do(tmp_path, model_dir):
    with pytest.raises(FileNotFoundError, match="python -m forecache.dllm.reference.train --out"):
        kv_bench(tmp_path / "nowhere").prepare(quick=True)
    config = LLaDAConfig(d_model=16, n_heads=2, n_kv_heads=2, n_layers=1, mlp_hidden_size=32, vocab_size=64,
                         embedding_size=64, max_sequence_length=64, mask_token_id=63)
    save_llada(LLaDAModel(config), tmp_path / "foreign")
    with pytest.raises(ValueError, match="does not use the task vocabulary"):
        kv_bench(tmp_path / "foreign").prepare(quick=True)
