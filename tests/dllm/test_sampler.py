"""The LLaDA sampler (arXiv 2502.09992): token schedule, remasking order, padding, CFG, cache hooks, errors."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch
from forecache.core.telemetry import Trace
from forecache.core.triggers import Interval
from forecache.dllm import cache_llada, llada_policy
from forecache.dllm.config import LLaDAConfig
from forecache.dllm.model import LLaDAModel
from forecache.dllm.sampler import generate, num_transfer_tokens, pad_prompts
from torch import nn

MASK = 7  # the stand-in models' mask id (vocabulary 0..7)


class TableModel(nn.Module):
    """A stand-in whose logits depend only on the (per-row) position: ``heights[p]`` on ``tokens[p]``, 0 elsewhere.

    Its proposals never change, so the low-confidence commit order is the order of ``heights`` within each
    block. Records every call; runs ``runner`` over two identity "layers" like LLaDAModel does.
    """

    def __init__(self, heights: list[float], tokens: list[int], vocab: int = 8, max_len: int = 64) -> None:
        super().__init__()
        self.config = SimpleNamespace(
            mask_token_id=MASK, vocab_size=vocab, embedding_size=vocab, max_sequence_length=max_len
        )
        self.table = torch.zeros(len(heights), vocab)
        self.table[torch.arange(len(heights)), torch.tensor(tokens)] = torch.tensor(heights)
        self.layers = [nn.Identity(), nn.Identity()]
        self.calls: list[dict] = []

    def forward(self, input_ids, attention_mask=None, *, logits_at=None):
        self.calls.append({"ids": input_ids.clone(), "mask": attention_mask, "logits_at": logits_at})
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        h = torch.zeros(*input_ids.shape, 1)
        for layer in self.layers:
            h = layer(h)
        logits = self.table[(mask.cumsum(1) - 1).clamp(min=0)] + h
        if logits_at is not None:
            logits = logits.gather(1, logits_at[..., None].expand(-1, -1, logits.shape[-1]))
        return logits


class PromptAwareModel(TableModel):
    """Conditional rows (prompt visible) favour token 1 (1.0 vs 0.9 for token 2); unconditional rows (prompt
    masked) give token 1 1.0 and token 2 0.0. Guided logits ``un + (s + 1)(cond - un)`` pick token 2 iff
    ``(s + 1) * 0.9 > 1``, i.e. ``s > 1/9``."""

    def forward(self, input_ids, attention_mask=None, *, logits_at=None):
        logits = super().forward(input_ids, attention_mask, logits_at=logits_at)
        cond = (input_ids[:, :1] != MASK).to(logits.dtype)  # first column: a real prompt token in these tests
        logits[..., 1] = 1.0
        logits[..., 2] = 0.9 * cond
        return logits


def _stand_in(n: int = 16) -> TableModel:
    return TableModel([0.0] * n, [0] * n)


def _tiny_llada() -> LLaDAModel:
    config = LLaDAConfig(
        d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=64, vocab_size=40, embedding_size=40,
        max_sequence_length=64, mask_token_id=39, rope_theta=10000.0, eos_token_id=1, pad_token_id=0,
    )
    torch.manual_seed(0)
    model = LLaDAModel(config).eval()
    with torch.no_grad():  # larger weights than the default init, so greedy answers are not one repeated token
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(std=1.0 if name.startswith("wte") else 0.3)
    return model


@pytest.fixture(scope="module")
def llada() -> LLaDAModel:
    return _tiny_llada()


def _reference(model, prompt: torch.Tensor, steps: int, gen_length: int, block_length: int, cfg_scale: float = 0.0):
    """The official greedy sampler's logic for one unpadded row, on full logits (no ``logits_at``)."""
    mask_id, p = model.config.mask_token_id, prompt.shape[1]
    x = torch.cat([prompt, torch.full((1, gen_length), mask_id)], dim=1)
    per_block = steps // (gen_length // block_length)
    for b in range(gen_length // block_length):
        end = p + (b + 1) * block_length
        k = num_transfer_tokens(x[:, end - block_length : end] == mask_id, per_block)[0]
        for i in range(per_block):
            masked = x == mask_id
            logits = model(x).double()
            if cfg_scale > 0:
                un = x.clone()
                un[:, :p] = mask_id
                un_logits = model(un).double()
                logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
            proposal = logits.argmax(-1)
            conf = torch.softmax(logits, -1).gather(-1, proposal[..., None])[..., 0]
            conf[:, end:] = -torch.inf
            conf = torch.where(masked, conf, -torch.inf)
            chosen = conf[0].topk(int(k[i])).indices
            x[0, chosen] = proposal[0, chosen]
    return x


# --- token schedule ------------------------------------------------------------------------------------------


def test_schedule_spreads_each_rows_masked_count_evenly_remainder_first():
    masked = torch.zeros(3, 12, dtype=torch.bool)
    masked[0, :10] = True  # 10 over 4 steps
    masked[1, :12] = True  # 12 over 4
    masked[2, :2] = True  # 2 over 4: fewer tokens than steps
    assert num_transfer_tokens(masked, 4).tolist() == [[3, 3, 2, 2], [3, 3, 3, 3], [1, 1, 0, 0]]


# --- commit order and invariants -------------------------------------------------------------------------------


def test_low_confidence_commits_the_hand_computed_order_block_by_block():
    # prompt 3 tokens, answer 8 = 2 blocks of 4, 4 steps (2 per block, 2 tokens per step)
    heights = [5.0, 5.0, 5.0] + [0.5, 3.0, 1.0, 2.0] + [4.0, 0.1, 2.5, 1.5]
    tokens = [0, 0, 0] + [1, 2, 3, 4] + [5, 6, 1, 2]
    model = TableModel(heights, tokens)
    prompt = torch.tensor([[4, 5, 6]])
    out = generate(model, prompt, steps=4, gen_length=8, block_length=4)
    seen = [call["ids"][0] for call in model.calls] + [out[0]]
    committed = [sorted((seen[i + 1] != MASK).nonzero().flatten().tolist()) for i in range(4)]
    # block 0 (columns 3..6): heights 0.5 3.0 1.0 2.0 -> {4, 6} then {3, 5}; the 4.0 at column 7 must wait
    assert committed[0] == [0, 1, 2, 4, 6]
    assert committed[1] == [0, 1, 2, 3, 4, 5, 6]
    # block 1 (columns 7..10): heights 4.0 0.1 2.5 1.5 -> {7, 9} then {8, 10}
    assert committed[2] == [0, 1, 2, 3, 4, 5, 6, 7, 9]
    assert committed[3] == list(range(11))
    assert out[0].tolist() == [4, 5, 6] + tokens[3:]
    for before, after in itertools.pairwise(seen):  # prompt fixed; a committed token never changes
        assert torch.equal(before[:3], prompt[0])
        kept = before != MASK
        assert torch.equal(after[kept], before[kept])
    # the model is asked for the current block's logits only
    assert [c["logits_at"][0].tolist() for c in model.calls] == [[3, 4, 5, 6]] * 2 + [[7, 8, 9, 10]] * 2


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_no_token_leaves_its_block_early_and_no_mask_remains(llada, remasking, temperature):
    prompt = torch.tensor([[3, 4, 5, 6]])
    g = torch.Generator().manual_seed(0)
    calls: list[torch.Tensor] = []
    hook = llada.register_forward_pre_hook(lambda module, args: calls.append(args[0].clone()))
    try:
        out = generate(llada, prompt, steps=9, gen_length=12, block_length=4, temperature=temperature,
                       remasking=remasking, generator=g)
    finally:
        hook.remove()
    for step, x in enumerate(calls):
        block_end = 4 + (step // 3 + 1) * 4
        assert (x[0, block_end:] == 39).all()  # later blocks untouched while an earlier block is decoded
        assert torch.equal(x[0, :4], prompt[0])
    assert not (out == 39).any() and torch.equal(out[:, :4], prompt)


def test_logits_at_is_lossless_and_matches_the_official_full_logits_logic(llada):
    x = torch.randint(0, 39, (2, 12), generator=torch.Generator().manual_seed(0))
    at = torch.tensor([[4, 5, 6, 7], [8, 9, 10, 11]])
    assert torch.equal(llada(x, logits_at=at), llada(x).gather(1, at[..., None].expand(-1, -1, 40)))
    prompt = torch.tensor([[3, 4, 5, 6, 7]])
    for steps, block_length, cfg_scale in [(6, 4, 0.0), (12, 12, 0.0), (6, 4, 0.5)]:
        out = generate(llada, prompt, steps=steps, gen_length=12, block_length=block_length, cfg_scale=cfg_scale)
        assert torch.equal(out, _reference(llada, prompt, steps, 12, block_length, cfg_scale))


# --- left-padded batches ----------------------------------------------------------------------------------------


def test_pad_prompts_left_pads_and_rejects_empty_input():
    ids, mask = pad_prompts([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="non-empty list"):
        pad_prompts([], pad_id=0)
    with pytest.raises(ValueError, match="prompt 1 is empty.*at least one token"):
        pad_prompts([[1], []], pad_id=0)


@pytest.mark.parametrize(
    ("temperature", "remasking", "cfg_scale"),
    [(0.0, "low_confidence", 0.0), (0.8, "low_confidence", 0.0), (0.8, "random", 0.0), (0.8, "low_confidence", 1.5)],
)
def test_each_padded_row_gets_exactly_the_tokens_it_gets_alone(llada, temperature, remasking, cfg_scale):
    # with one generator per row each row draws the noise it draws alone (noise covers the block only, so
    # its shape does not depend on the padding); a single shared generator cannot give this under sampling
    prompts = [[3, 4, 5, 6, 7, 8], [9, 10], [11, 12, 13]]
    ids, mask = pad_prompts(prompts, pad_id=0)
    kwargs = {"steps": 8, "gen_length": 8, "block_length": 4, "temperature": temperature,
              "remasking": remasking, "cfg_scale": cfg_scale}
    batch = generate(llada, ids, mask, generator=[torch.Generator().manual_seed(s) for s in range(3)], **kwargs)
    for row, prompt in enumerate(prompts):
        alone = generate(llada, torch.tensor([prompt]), generator=torch.Generator().manual_seed(row), **kwargs)
        assert torch.equal(batch[row, ids.shape[1] :], alone[0, len(prompt) :])
        assert torch.equal(batch[row, : ids.shape[1]], ids[row])  # pads and prompt untouched
    assert len({tuple(r) for r in batch[:, ids.shape[1] :].tolist()}) == 3  # the rows really differ


def test_sampling_is_deterministic_given_the_generator(llada):
    prompt = torch.tensor([[3, 4, 5]])
    kwargs = {"steps": 8, "gen_length": 8, "block_length": 8, "temperature": 1.0, "remasking": "random"}
    a = generate(llada, prompt, generator=torch.Generator().manual_seed(7), **kwargs)
    b = generate(llada, prompt, generator=torch.Generator().manual_seed(7), **kwargs)
    c = generate(llada, prompt, generator=torch.Generator().manual_seed(8), **kwargs)
    assert torch.equal(a, b) and not torch.equal(a, c)
    shown = generate(llada, prompt, generator=torch.Generator().manual_seed(7), progress=True, **kwargs)
    assert torch.equal(shown, a)  # the progress bar changes nothing


def test_generated_positions_are_attended_and_pads_are_not():
    model = _stand_in()
    ids, mask = pad_prompts([[1, 2, 3], [4]], pad_id=0)
    generate(model, ids, mask, steps=2, gen_length=4, block_length=4)
    assert model.calls[0]["mask"].tolist() == [[1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1]]


# --- classifier-free guidance -------------------------------------------------------------------------------------


def test_cfg_scale_zero_is_plain_sampling_with_a_batch_of_b():
    plain, zero = _stand_in(), _stand_in()
    prompt = torch.tensor([[1, 2], [3, 4]])
    a = generate(plain, prompt, steps=4, gen_length=4, block_length=4)
    b = generate(zero, prompt, steps=4, gen_length=4, block_length=4, cfg_scale=0.0)
    assert torch.equal(a, b) and all(c["ids"].shape[0] == 2 for c in zero.calls)


def test_cfg_batches_cond_rows_then_prompt_masked_rows():
    model = _stand_in()
    ids, mask = pad_prompts([[1, 2, 3], [4, 5]], pad_id=0)
    generate(model, ids, mask, steps=2, gen_length=4, block_length=4, cfg_scale=1.0)
    for call in model.calls:
        seen = call["ids"]
        assert seen.shape == (4, 7)
        assert torch.equal(seen[:2, :3], ids)
        assert seen[2:, :3].tolist() == [[MASK, MASK, MASK], [0, MASK, MASK]]  # real tokens masked, pads kept
        assert torch.equal(seen[2:, 3:], seen[:2, 3:])  # both halves share the answer
        assert torch.equal(call["mask"][2:], call["mask"][:2])
        assert call["logits_at"].shape == (4, 4)


@pytest.mark.parametrize(("cfg_scale", "token"), [(0.0, 1), (0.1, 1), (0.12, 2), (1.0, 2)])
def test_cfg_combines_logits_as_uncond_plus_scale_plus_one_times_difference(cfg_scale, token):
    model = PromptAwareModel([0.0] * 8, [0] * 8)
    out = generate(model, torch.tensor([[3, 4]]), steps=2, gen_length=4, block_length=4, cfg_scale=cfg_scale)
    assert out[0, 2:].tolist() == [token] * 4


# --- a cache method on the LLaDA site ------------------------------------------------------------------------------


class RecordingPolicy:
    """A dLLM cache method stub: records start() and every runner() call; its runner counts layer calls."""

    def __init__(self) -> None:
        self.started: list[tuple] = []
        self.states: list[RecordingState] = []

    def start(self, model, prompt_length, gen_length, block_length, *, storage=None):
        self.started.append((model, prompt_length, gen_length, block_length))
        self.states.append(RecordingState())
        return self.states[-1]

    def trigger(self):
        return Interval(1)


class RecordingState:
    """What the LLaDA site reads of a state: runner, trace, FLOP tallies, close, reduce, stats."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], int, int]] = []
        self.layer_calls = 0
        self.flops = self.flops_full = SimpleNamespace(total=0)  # computes everything: nothing is saved
        self.reduce = None
        self.closed = False

    def trace(self):
        return Trace()

    def close(self):
        self.closed = True

    def runner(self, x, step, block):
        self.calls.append((tuple(x.shape), step, block))

        def run(i, layer, h, cos, sin, key_mask):
            self.layer_calls += 1
            return layer(h, cos, sin, key_mask)

        return run

    def stats(self):
        return {"layer_calls": self.layer_calls}


@pytest.mark.parametrize("cfg_scale", [0.0, 2.0])
def test_cache_sees_every_model_call_with_global_step_and_block(llada, cfg_scale):
    policy = RecordingPolicy()
    ids, mask = pad_prompts([[3, 4, 5], [6]], pad_id=0)
    plain = generate(llada, ids, mask, steps=6, gen_length=12, block_length=4, cfg_scale=cfg_scale)
    out, stats = generate(llada, ids, mask, steps=6, gen_length=12, block_length=4, cfg_scale=cfg_scale,
                          cache=policy, return_stats=True)
    assert torch.equal(out, plain)  # a runner that always computes changes nothing
    assert policy.started == [(llada, 3, 12, 4)]
    rows = 4 if cfg_scale else 2
    assert policy.states[0].calls == [((rows, 15), s, s // 2) for s in range(6)]
    assert stats.pop("trace") == Trace()  # the stub decides nothing
    assert stats == {"steps": 6, "blocks": 3, "model_calls": 6, "batch": rows, "cache": {"layer_calls": 12}}
    assert generate(llada, ids, mask, steps=6, gen_length=12, block_length=4, return_stats=True)[1]["cache"] is None
    generate(llada, ids, mask, steps=6, gen_length=12, block_length=4, cache=policy)
    assert len(policy.states) == 2 and len(policy.states[1].calls) == 6  # a fresh state per generation
    assert all(state.closed for state in policy.states)  # the handle's removal closes the last one


def test_a_handle_serves_many_requests_one_generation_each(llada):
    policy = RecordingPolicy()
    ids, mask = pad_prompts([[3, 4, 5], [6]], pad_id=0)
    handle = cache_llada(llada, llada_policy(policy, "recording", ""))
    for _ in range(2):
        generate(llada, ids, mask, steps=6, gen_length=12, block_length=4, cache=handle)
    assert handle.stats().generations == 2 and handle.stats().calls == 12
    assert [s.calls for s in policy.states] == [[((2, 15), s, s // 2) for s in range(6)]] * 2
    assert policy.states[0].closed and not policy.states[1].closed  # the next generation closed the first
    handle.remove()
    with pytest.raises(ValueError, match="handle on another model"):
        generate(llada, ids, mask, steps=6, gen_length=12, block_length=4, cache=handle)


def test_a_cached_model_called_outside_a_generation_says_how_to_fix_it(llada):
    handle = cache_llada(llada, llada_policy(RecordingPolicy(), "recording", ""))
    handle.step(0)
    with pytest.raises(RuntimeError, match="sequence_layout"):
        llada(torch.tensor([[3, 4, MASK]]))
    handle.remove()


# --- bad input -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"input_ids": torch.zeros(0, 3, dtype=torch.long)}, "non-empty .batch, prompt_length."),
        ({"input_ids": torch.tensor([1, 2, 3])}, "non-empty .batch, prompt_length."),
        ({"gen_length": 10, "block_length": 4}, "choose a block_length that divides gen_length"),
        ({"block_length": 0}, "positive multiple of block_length"),
        ({"steps": 3, "block_length": 2}, "use steps = k \\* 4"),
        ({"steps": 2, "block_length": 2}, "positive multiple of the number of blocks"),
        ({"gen_length": 64, "block_length": 64}, "67 tokens exceeds model.config.max_sequence_length=64; shorten"),
        ({"mask_id": 8}, "outside the vocabulary .0, 8.; pass the model's mask token id"),
        ({"mask_id": -1}, "outside the vocabulary"),
        ({"input_ids": torch.tensor([[1, MASK, 3]])}, "contains the mask id 7; remove it"),
        ({"attention_mask": torch.ones(1, 2)}, "pass one 0/1 entry per prompt token"),
        ({"attention_mask": torch.tensor([[1, 1, 0]])}, "right padding.*pad prompts on the left"),
        ({"attention_mask": torch.tensor([[0, 2, 1]])}, "only 0 .pad. and 1"),
        ({"remasking": "entropy"}, "unknown remasking 'entropy'; use one of"),
        ({"temperature": -0.5}, "must be >= 0"),
        ({"cfg_scale": -1.0}, "must be >= 0"),
        ({"generator": [torch.Generator()] * 2}, "one generator, or one per row"),
    ],
)
def test_bad_input_raises_a_value_error_naming_the_fix(change, message):
    kwargs = {"input_ids": torch.tensor([[1, 2, 3]]), "steps": 4, "gen_length": 8, "block_length": 8} | change
    with pytest.raises(ValueError, match=message):
        generate(_stand_in(), **kwargs)


def test_a_pad_equal_to_the_mask_id_is_never_decoded():
    # only answer positions are ever masked, so a pad token that happens to be the mask id stays a pad
    model = TableModel([1.0] * 6, [3] * 6)
    ids, mask = pad_prompts([[1, 2], [4]], pad_id=MASK)
    out = generate(model, ids, mask, steps=2, gen_length=4, block_length=4)
    assert out[1, 0].item() == MASK and (out[:, 2:] == 3).all()
