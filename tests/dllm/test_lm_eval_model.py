"""The lm-eval model ``forecache-llada``: built through lm-eval's registry from a tiny LLaDA saved in the official
layout, driven with real ``Instance`` requests (offline: no task, no dataset)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

pytest.importorskip("lm_eval")

from forecache.dllm import LLaDAConfig, LLaDAModel, generate, save_llada
from forecache.dllm.dllm_cache import DllmCache
from forecache.dllm.lm_eval_model import LLaDAEvalLM, masked_counts, mc_loglikelihood
from forecache.dllm.reference.vocab import (
    EOS_ID,
    IDS,
    MASK_ID,
    PAD_ID,
    TOKENS,
    build_tokenizer,
)
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model, model_registry

GEN = "steps=8,gen_length=8,block_length=4"  # two blocks of four steps


def tiny_llada(seed: int = 0, **overrides) -> LLaDAModel:
    """Random LLaDA over the reference word vocabulary. Weights are scaled up (default init makes a model this
    small answer one token everywhere) and norms perturbed, so answers vary with the prompt and the position."""
    torch.manual_seed(seed)
    kw = {"d_model": 32, "n_heads": 4, "n_kv_heads": 2, "n_layers": 2, "mlp_hidden_size": 48,
          "vocab_size": len(TOKENS), "embedding_size": len(TOKENS), "mask_token_id": MASK_ID,
          "eos_token_id": EOS_ID, "pad_token_id": PAD_ID, "max_sequence_length": 64, "rope_theta": 10000.0}
    model = LLaDAModel(LLaDAConfig(**(kw | overrides))).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_f" in name:
                p.add_(0.3 * torch.randn_like(p))
            else:
                p.mul_(5.0)
    return model


def preferring(token: str) -> LLaDAModel:
    """A model whose logits are the head's bias whatever the input: it always predicts ``token`` (p ~ 0.95)."""
    model = tiny_llada(include_bias=True)
    with torch.no_grad():
        model.ln_f.weight.zero_()  # the head's input is zero: logits = ff_out.bias
        model.ff_out.bias.zero_()
        model.ff_out.bias[IDS[token]] = 8.0
    return model


def save(model: LLaDAModel, folder) -> str:
    save_llada(model, folder)
    build_tokenizer().save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    return save(tiny_llada(), tmp_path_factory.mktemp("llada"))


def make_lm(folder: str, args: str = "") -> LLaDAEvalLM:
    return get_model("forecache-llada").create_from_arg_string(f"pretrained={folder},device=cpu,{args}")


def gen_request(context: str, **gen_kwargs) -> Instance:
    return Instance("generate_until", doc={}, arguments=(context, gen_kwargs), idx=0)


def ll_request(context: str, continuation: str) -> Instance:
    return Instance("loglikelihood", doc={}, arguments=(context, continuation), idx=0)


CONTEXTS = ["find k01 = 3 ; k02 = 4 ; k01 ->", "add 1 2 +", "copy a b c d e f ->", "reverse x y"]


# ---------------------------------------------------------------- construction
def test_the_registry_builds_the_model_and_its_cache_from_model_args(folder):
    lm = make_lm(folder, f"cache=dllm_cache,prompt_interval=5,response_interval=3,rho=0.5,batch_size=4,{GEN}")
    assert isinstance(lm, LLaDAEvalLM)
    assert lm.cache.where.method == DllmCache(prompt_interval=5, response_interval=3, rho=0.5)
    assert (lm.batch_size, lm.steps, lm.gen_length, lm.block_length) == (4, 8, 8, 4)
    assert make_lm(folder, "cache=none").cache is None and make_lm(folder).cache is None
    assert "hf" in model_registry  # registering ours did not hide lm-eval's built-in models


@pytest.mark.parametrize(("args", "message"), [
    ("cache=teacache", "unknown cache='teacache'"),
    ("cache=dllm_cache,rhoo=0.3", "unknown model_args ['rhoo']"),
    ("stepz=4", "unknown model_args ['stepz']"),
    ("batch_size=auto", "batch_size=auto is not supported"),
    ("remasking=top_k", "remasking='top_k'"),
    ("dtype=int4", "dtype='int4' is not supported"),
])
def test_bad_model_args_raise_a_value_error_naming_them(folder, args, message):
    with pytest.raises(ValueError) as info:
        make_lm(folder, args)
    assert message in str(info.value)


def test_a_missing_checkpoint_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="not a folder with config.json"):
        make_lm(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="needs model_args pretrained=PATH"):
        get_model("forecache-llada").create_from_arg_string("device=cpu")


# ---------------------------------------------------------------- generate_until
def raw_answer(lm: LLaDAEvalLM, context: str, gen_length: int = 8, block_length: int = 4) -> list[int]:
    """The sampler's answer ids for one prompt, called directly."""
    ids = torch.tensor([lm._encode(context)])
    out = generate(lm.model, ids, steps=gen_length, gen_length=gen_length, block_length=block_length)
    return out[0, ids.shape[1] :].tolist()


def test_batched_answers_come_back_in_request_order_and_equal_single_answers(folder):
    lm = make_lm(folder, f"batch_size=3,{GEN}")
    requests = [gen_request(c, until=["\n"]) for c in CONTEXTS]
    batched = lm.generate_until(requests)
    lm.batch_size = 1
    single = [lm.generate_until([r])[0] for r in requests]
    assert batched == single
    assert len(set(batched)) > 1  # different prompts, different answers: order is really tested
    for context, answer in zip(CONTEXTS, batched, strict=True):
        assert answer == lm._decode_answer(raw_answer(lm, context), [])


def test_sampled_answers_are_reproducible_and_independent_of_batching(folder):
    lm = make_lm(folder, f"batch_size=4,temperature=1.0,remasking=random,{GEN}")
    requests = [gen_request(c) for c in CONTEXTS]
    first = lm.generate_until(requests)
    assert lm.generate_until(requests[::-1]) == first[::-1]
    lm.batch_size = 1
    assert [lm.generate_until([r])[0] for r in requests] == first
    greedy = [lm.generate_until([gen_request(c, do_sample=False)])[0] for c in CONTEXTS]
    assert greedy != first and greedy == make_lm(folder, f"remasking=random,{GEN}").generate_until(requests)


def test_answers_stop_at_the_earliest_stop_string_and_at_the_end_token(folder):
    lm = make_lm(folder, GEN)
    words = lm._decode_answer(raw_answer(lm, CONTEXTS[0]), []).split(" ")
    assert len(words) >= 4
    text = " ".join(words)
    answer = lm.generate_until([gen_request(CONTEXTS[0], until=["->", words[3]])])[0]
    assert answer == text[: text.find(words[3])] and len(answer) < len(text)
    a, b, c, d = IDS["a"], IDS["b"], IDS["c"], IDS["d"]
    assert lm._decode_answer([a, b, c, d], ["c", "b c"]) == "a "  # overlapping stops: the earliest start wins
    assert lm._decode_answer([a, b, EOS_ID, c, PAD_ID], []) == "a b"
    assert lm._decode_answer([a, b, c, PAD_ID], ["c"]) == "a b "
    assert lm._decode_answer([a, MASK_ID, b], []) == "a  b"  # a left-over special is dropped from the text


def test_an_always_eos_model_answers_with_the_empty_string(tmp_path):
    lm = make_lm(save(preferring("<eos>"), tmp_path), GEN)
    assert lm.generate_until([gen_request(c) for c in CONTEXTS[:2]]) == ["", ""]


def test_gen_kwargs_set_the_answer_length_rounded_up_to_whole_blocks(folder):
    lm = make_lm(folder, "block_length=4")
    settings, until = lm._settings({"until": "\n", "max_gen_toks": 5, "top_p": 0.9})
    assert settings.gen_length == 8 and settings.steps == 8 and until == ["\n"]
    assert lm._settings({})[0].gen_length == 256  # lm-eval's default budget
    pinned = make_lm(folder, "gen_length=12,block_length=4,steps=6")._settings({"max_gen_toks": 100})[0]
    assert (pinned.gen_length, pinned.steps) == (12, 6)  # a gen_length model arg wins over max_gen_toks
    sampled = lm._settings({"temperature": 0.7, "cfg_scale": 1.5, "steps": 4})[0]
    assert (sampled.temperature, sampled.cfg_scale, sampled.steps) == (0.7, 1.5, 4)
    assert lm._settings({"temperature": 0.7, "do_sample": False})[0].temperature == 0.0
    # answers of different lengths in one call: grouped by settings, returned in order
    short, long_ = lm.generate_until([gen_request("add 1 2 +", max_gen_toks=4),
                                      gen_request("add 1 2 +", max_gen_toks=8)])
    assert short == lm._decode_answer(raw_answer(lm, "add 1 2 +", 4, 4), [])
    assert long_ == lm._decode_answer(raw_answer(lm, "add 1 2 +", 8, 4), [])


def test_never_skip_cache_gives_the_uncached_answers_and_a_real_cache_computes_less(folder):
    requests = [gen_request(c) for c in CONTEXTS]
    plain = make_lm(folder, f"batch_size=2,{GEN}")
    exact = make_lm(folder, f"batch_size=2,cache=dllm_cache,prompt_interval=1,response_interval=1,rho=0.0,{GEN}")
    assert exact.generate_until(requests) == plain.generate_until(requests)
    assert exact.get_model_info()["forecache_cache_compute_fraction"] == 1.0
    cached = make_lm(folder, f"batch_size=2,cache=dllm_cache,prompt_interval=8,response_interval=4,rho=0.25,{GEN}")
    assert len(cached.generate_until(requests)) == len(requests)
    info = cached.get_model_info()
    assert info["forecache_cache"] == "dllm_cache" and info["forecache_cache_compute_fraction"] < 0.75
    assert plain.get_model_info()["forecache_cache_compute_fraction"] is None


# ---------------------------------------------------------------- loglikelihood
def test_one_token_continuation_is_scored_exactly(folder):
    lm = make_lm(folder, "mc_num=5,batch_size=2,is_check_greedy=false")
    model = lm.model
    for context, word in [("add 1 2 +", "3"), ("copy a b ->", "a")]:
        ids = lm._encode(context) + [MASK_ID]
        expected = torch.log_softmax(model(torch.tensor([ids]))[0, -1].double(), -1)[IDS[word]].item()
        (ll, greedy), = lm.loglikelihood([ll_request(context, " " + word)])
        assert ll == pytest.approx(expected, abs=1e-5) and greedy is False


@pytest.mark.parametrize("cfg_scale", [0.0, 2.0])
def test_the_estimate_is_unbiased_against_exact_enumeration(folder, cfg_scale):
    """E[(L/l) sum_masked log p] over l ~ U{1..L} and uniform subsets, enumerated for L = 3, vs 3840 samples
    (standard error about 0.5%)."""
    model = make_lm(folder).model
    prefix, target = [IDS[w] for w in ["add", "1", "2", "+"]], [IDS["3"], IDS[";"], IDS["5"]]
    P, L = len(prefix), len(target)
    exact = 0.0
    for l in range(1, L + 1):
        subsets = list(itertools.combinations(range(L), l))
        for subset in subsets:
            x = torch.tensor([prefix + [MASK_ID if i in subset else t for i, t in enumerate(target)]])
            logits = model(x)
            if cfg_scale:
                uncond = x.clone()
                uncond[:, :P] = MASK_ID
                un = model(uncond)
                logits = un + (cfg_scale + 1) * (logits - un)
            logp = torch.log_softmax(logits[0, P:].double(), -1)
            exact += sum(logp[i, target[i]].item() for i in subset) * (L / l) / (L * len(subsets))
    estimate = mc_loglikelihood(model, prefix, target, mc_num=3840, batch_size=48, cfg_scale=cfg_scale,
                                generator=torch.Generator().manual_seed(0))
    assert estimate == pytest.approx(exact, rel=0.02)


def test_stratified_counts_are_uniform_per_row_and_cover_the_range_per_batch():
    counts = torch.stack([masked_counts(6, 6, torch.Generator().manual_seed(s)) for s in range(60)])
    assert all(sorted(row.tolist()) == [1, 2, 3, 4, 5, 6] for row in counts)  # each batch: every count once
    assert set(counts[:, 0].tolist()) == set(range(1, 7))
    assert masked_counts(1, 5).tolist() == [1] * 5


def test_loglikelihood_is_seeded_and_independent_of_request_order(folder):
    lm = make_lm(folder, "mc_num=8,batch_size=4,is_check_greedy=false")
    requests = [ll_request(c, " a b c") for c in CONTEXTS]
    first = lm.loglikelihood(requests)
    assert lm.loglikelihood(requests[::-1]) == first[::-1]
    other = make_lm(folder, "mc_num=8,batch_size=4,is_check_greedy=false,seed=7").loglikelihood(requests)
    assert other != first and all(math.isfinite(ll) and ll < 0 for ll, _ in first + other)


def test_a_preferred_continuation_scores_higher_and_exactly_and_is_the_greedy_one(tmp_path):
    lm = make_lm(save(preferring("7"), tmp_path), "mc_num=6,batch_size=3")
    logp = torch.log_softmax(lm.model.ff_out.bias.detach().double(), -1)
    (ll7, greedy7), (ll8, greedy8), (ll_mixed, greedy_mixed) = lm.loglikelihood(
        [ll_request("add 1 2 +", " 7 7 7"), ll_request("add 1 2 +", " 8 8 8"), ll_request("add 1 2 +", " 7 8 7")])
    # logits do not depend on the input, so every sample scores (L/l) * l * log p = L log p exactly
    assert ll7 == pytest.approx(3 * logp[IDS["7"]].item(), abs=1e-5)
    assert ll8 == pytest.approx(3 * logp[IDS["8"]].item(), abs=1e-5)
    assert ll7 > ll_mixed > ll8
    assert (greedy7, greedy8, greedy_mixed) == (True, False, False)


def test_the_greedy_flag_is_true_exactly_for_the_samplers_own_continuation(folder):
    lm = make_lm(folder, "mc_num=2,batch_size=2,cache=dllm_cache,prompt_interval=1,response_interval=1,rho=0")
    context = "copy a b c ->"
    own = raw_answer(lm, context, 3, 3)
    text = " " + " ".join(TOKENS[i] for i in own)
    # the fixture's seeded model answers with plain words here; a special token would make the check vacuous
    assert not any(TOKENS[i] in ("<pad>", "<unk>", "<eos>", "<mask>") for i in own), own
    flipped = " " + " ".join(TOKENS[i] for i in own[::-1]) if own != own[::-1] else " z z z"
    (_, greedy), (_, not_greedy), (empty, certain) = lm.loglikelihood(
        [ll_request(context, text), ll_request(context, flipped), ll_request(context, "")])
    assert greedy is True and not_greedy is False and (empty, certain) == (0.0, True)


def test_an_empty_context_is_scored_from_the_continuation_alone(folder):
    lm = make_lm(folder, "mc_num=4,batch_size=4")
    (ll, greedy), = lm.loglikelihood([ll_request("", "a b")])
    assert math.isfinite(ll) and ll < 0 and isinstance(greedy, bool)
    assert len(lm.generate_until([gen_request("", max_gen_toks=4, block_length=4)])) == 1


def test_rolling_loglikelihood_is_refused_with_the_reason(folder):
    with pytest.raises(NotImplementedError, match="no loglikelihood_rolling"):
        make_lm(folder).loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("a b",), 0)])


# ---------------------------------------------------------------- chat template
def test_chat_template_comes_from_the_tokenizer(folder, tmp_path):
    lm = make_lm(folder)
    assert lm.chat_template(False) is None
    with pytest.raises(ValueError, match="has no chat template"):
        lm.apply_chat_template([{"role": "user", "content": "add 1 2 +"}])
    tokenizer = build_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} ; {% endfor %}"
    tokenizer.save_pretrained(str(tmp_path))
    chat = make_lm(folder, f"tokenizer={tmp_path}")
    assert chat.apply_chat_template([{"role": "user", "content": "add 1 2 +"}]) == "add 1 2 + ; "
    assert chat.chat_template(True) == tokenizer.chat_template and chat.tokenizer_name
