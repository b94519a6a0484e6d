"""The reference diffusion LM's data: tasks, vocabulary and the SFT batch encoding."""

import random

import pytest
import torch
from forecache.dllm import LLaDAConfig, LLaDAModel
from forecache.dllm.reference.tasks import (
    TASKS,
    answer_of,
    drill_values,
    example,
    examples,
    is_correct,
    kv_drill,
)
from forecache.dllm.reference.train import REFERENCE_CONFIG, Curriculum, batch, encode, parse_args, sft_loss
from forecache.dllm.reference.vocab import EOS_ID, IDS, MASK_ID, PAD_ID, build_tokenizer


def test_tasks_are_deterministic_and_right():
    assert examples("kv", 3, 7) == examples("kv", 3, 7) != examples("kv", 3, 8)
    kv = examples("kv", 20, 0)
    for ex in kv:
        words = ex.prompt.split()
        assert len(words) >= 300  # long prompts are where prompt caching pays
        key = words[-2]
        assert " ".join(words[words.index(key) + 2:words.index(key) + 4]) == ex.answer
    for ex in examples("add", 20, 0):
        a, b = ex.prompt[4:-2].split(" + ")
        assert int(a.replace(" ", "")) + int(b.replace(" ", "")) == int(ex.answer.replace(" ", ""))
    rev = examples("reverse", 5, 0)
    assert all(ex.answer.split() == ex.prompt.split()[2:][::-1] for ex in rev)
    with pytest.raises(ValueError, match="choose one of"):
        example("sort", random.Random(0))
    with pytest.raises(ValueError, match="pairs"):
        example("kv", random.Random(0), pairs=500)


def test_scoring_reads_up_to_the_first_eos():
    ex = examples("copy", 1, 0)[0]
    assert is_correct(ex, ex.answer + " <eos> <eos> x")
    assert not is_correct(ex, ex.answer + " a <eos>")
    assert answer_of("<eos> 1 2") == ""


def test_tokenizer_covers_every_task_word_and_pads_left(tmp_path):
    tok = build_tokenizer()
    for task in TASKS:
        for ex in examples(task, 10, 1):
            ids = tok(ex.prompt + " " + ex.answer)["input_ids"]
            assert tok.unk_token_id not in ids
            assert tok.decode(ids) == ex.prompt + " " + ex.answer
    assert (tok.mask_token_id, tok.pad_token_id, tok.eos_token_id) == (MASK_ID, PAD_ID, EOS_ID)
    from forecache.dllm import load_tokenizer

    tok.save_pretrained(str(tmp_path))
    assert load_tokenizer(tmp_path)("find k03 ->")["input_ids"] == [IDS["find"], IDS["k03"], IDS["->"]]


def test_encode_left_pads_and_sft_loss_is_finite():
    torch.manual_seed(0)
    exs = [examples("add", 1, 0)[0], examples("copy", 1, 0)[0]]
    ids, mask, width = encode(exs, 16)
    assert ids.shape == (2, width + 16) and mask[:, width:].all()
    for row, ex in enumerate(exs):
        n = len(ex.prompt.split())
        assert not mask[row, :width - n].any() and mask[row, width - n:].all()
        answer = ids[row, width:].tolist()
        assert answer[: len(ex.answer.split())] == [IDS[w] for w in ex.answer.split()]
        assert set(answer[len(ex.answer.split()):]) == {EOS_ID}
    with pytest.raises(ValueError, match="gen-length"):
        encode(exs, 2)
    config = LLaDAConfig.from_dict({**REFERENCE_CONFIG, "n_layers": 1, "d_model": 32, "n_heads": 2,
                                    "n_kv_heads": 2, "mlp_hidden_size": 64})
    loss = sft_loss(LLaDAModel(config), ids, mask, width, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss > 0
    loss.backward()


def test_a_drill_asks_distinct_keys_of_its_context_and_marks_only_values():
    ex = kv_drill(random.Random(0), pairs=8, queries=5)
    context, words = ex.prompt.split(), ex.answer.split()
    assert len(context) == 8 * 5 and len(words) == 5 * 6
    asked = [words[i + 1] for i in range(0, len(words), 6)]
    assert len(set(asked)) == 5
    for i, key in zip(range(0, len(words), 6), asked):
        at = context.index(key)
        assert words[i + 3:i + 5] == context[at + 2:at + 4]  # the value the context gives that key
    assert drill_values(ex.answer) == [False, False, False, True, True, False] * 5
    assert len(kv_drill(random.Random(0), pairs=3, queries=12).answer.split()) == 3 * 6


def test_a_drill_batch_masks_only_values_and_its_loss_is_the_value_loss():
    torch.manual_seed(0)
    args = parse_args(["--drill", "1", "--kv-pairs", "4", "6", "--batch-tokens", "200"])
    ids, mask, width, maskable, name, _ = batch("kv", random.Random(1), args, 6)
    assert name == "kv-drill" and maskable.shape == ids[:, width:].shape
    queries = maskable.shape[1] // 6  # one batch, one context size: as many look-ups as pairs (<= 12)
    assert 4 <= queries <= 6 and (maskable.sum(1) == 2 * queries).all()
    config = LLaDAConfig.from_dict({**REFERENCE_CONFIG, "n_layers": 1, "d_model": 32, "n_heads": 2,
                                    "n_kv_heads": 2, "mlp_hidden_size": 64})
    model = LLaDAModel(config)
    loss = sft_loss(model, ids, mask, width, torch.Generator().manual_seed(0), maskable)
    assert torch.isfinite(loss) and loss > 0
    seen = []
    model.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))
    for seed in range(5):
        sft_loss(model, ids, mask, width, torch.Generator().manual_seed(seed), maskable)
    masked = torch.stack([x[:, width:] == MASK_ID for x in seen])
    assert masked.any() and not (masked & ~maskable).any()  # only values are ever masked
    assert not any((x[:, :width] == MASK_ID).any() for x in seen)
    args = parse_args(["--drill", "0"])
    assert batch("kv", random.Random(1), args, 64)[3] is None and batch("add", random.Random(1), args, 64)[4] == "add"


def test_the_retrieval_ramp_grows_the_largest_context_over_the_run():
    args = parse_args(["--drill", "0", "--kv-pairs", "2", "64", "--kv-ramp", "0.5", "--batch-tokens", "400"])

    def pairs(progress, seed):
        curriculum = Curriculum(args)
        curriculum.update(progress, "kv", None, 0.0)
        ids, mask, width, _, _, drawn = batch("kv", random.Random(seed), args, curriculum.high)
        assert drawn == (int(mask[0].sum()) - 16 - 3) // 5  # prompt = 5 tokens per pair + "find kXX ->"
        return drawn

    assert {pairs(0.0, s) for s in range(20)} == {2}
    assert max(pairs(0.25, s) for s in range(40)) <= 33 < max(pairs(1.0, s) for s in range(40))


def test_the_adaptive_curriculum_grows_the_context_only_once_the_drills_at_its_top_are_learnt():
    curriculum = Curriculum(parse_args(["--kv-pairs", "4", "64", "--kv-advance", "0.5"]), window=3)
    assert curriculum.high == 4
    for loss in (0.9, 0.2, 0.2, 0.2):  # the window's mean first falls below 0.5 at the fourth drill
        curriculum.update(0.0, "kv-drill", 4, loss)
    assert curriculum.high == 5
    for task, pairs, loss in [("kv", 5, 0.0), ("kv-drill", 2, 0.0), ("kv-drill", 5, 0.9)] * 3:
        curriculum.update(1.0, task, pairs, loss)  # SFT batches, small contexts and high losses: no growth
    assert curriculum.high == 5
    for _ in range(3):
        curriculum.update(0.0, "kv-drill", 5, 0.1)
    assert curriculum.high == 6
    curriculum.high = 60
    for _ in range(3):
        curriculum.update(0.0, "kv-drill", 50, 0.1)
    assert curriculum.high == 64  # by a quarter, capped at MAX


def test_the_key_pool_grows_before_the_contexts_do():
    args = parse_args(["--drill", "1", "--kv-pairs", "2", "64", "--kv-advance", "0.5", "--kv-keys", "10"])
    curriculum = Curriculum(args, window=2)
    assert (curriculum.keys, curriculum.high) == (10, 2)
    grown = []
    for _ in range(6):
        for _ in range(2):
            curriculum.update(0.0, "kv-drill", curriculum.high, 0.1)
        grown.append((curriculum.keys, curriculum.high))
    assert grown == [(15, 2), (22, 2), (33, 2), (49, 2), (73, 2), (100, 2)]
    for _ in range(2):
        curriculum.update(0.0, "kv-drill", 2, 0.1)
    assert (curriculum.keys, curriculum.high) == (100, 3)
    curriculum.keys = 10
    ids, _, width, _, _, _ = batch("kv", random.Random(0), args, 2, curriculum.keys)
    drawn = {int(t) for t in ids[:, :width].flatten()} & {IDS[f"k{i:02d}"] for i in range(100)}
    assert drawn and drawn <= {IDS[f"k{i:02d}"] for i in range(10)}  # only the pool's keys
    with pytest.raises(ValueError, match="--kv-advance"):
        Curriculum(parse_args(["--kv-keys", "10"]))
    with pytest.raises(ValueError, match="--kv-keys 1"):
        Curriculum(parse_args(["--kv-pairs", "2", "64", "--kv-advance", "0.5", "--kv-keys", "1"]))
    with pytest.raises(ValueError, match="pairs=12, keys=10"):
        kv_drill(random.Random(0), pairs=12, keys=10)


def test_drill_mask_all_masks_every_value_and_averages_their_cross_entropy():
    args = parse_args(["--drill", "1", "--kv-pairs", "3", "3", "--batch-tokens", "120", "--drill-mask", "all"])
    assert args.drill_mask == "all"
    ids, mask, width, maskable, _, _ = batch("kv", random.Random(2), args, 3)
    config = LLaDAConfig.from_dict({**REFERENCE_CONFIG, "n_layers": 1, "d_model": 32, "n_heads": 2,
                                    "n_kv_heads": 2, "mlp_hidden_size": 64})
    torch.manual_seed(0)
    model = LLaDAModel(config)
    losses = [sft_loss(model, ids, mask, width, torch.Generator().manual_seed(s), maskable, mask_all=True)
              for s in range(3)]
    noisy = ids.clone()
    noisy[:, width:][maskable] = MASK_ID
    logits = model(noisy, mask)[:, width:]
    expected = torch.nn.functional.cross_entropy(logits[maskable], ids[:, width:][maskable])
    assert all(torch.allclose(loss, expected, atol=1e-5) for loss in losses)  # no draw: t = 1 for every row
