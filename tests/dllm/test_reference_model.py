"""The committed reference model, models/llada-tasks: it loads through the official layout and does the tasks it
has learned (retrieval, addition, copy and reverse; accuracies on 200 examples each are in its CARD.md)."""

from pathlib import Path

import torch
from forecache.dllm import load_llada, load_tokenizer
from forecache.dllm.benchmark import load_reference
from forecache.dllm.reference.evaluate import answer_tokens, decode
from forecache.dllm.reference.tasks import examples, is_correct
from forecache.dllm.reference.train import REFERENCE_CONFIG

MODEL = Path(__file__).resolve().parents[2] / "models" / "llada-tasks"


def test_the_reference_model_loads_with_its_tokenizer_and_the_training_config():
    model = load_llada(MODEL)
    config = model.config
    assert all(getattr(config, k) == v for k, v in REFERENCE_CONFIG.items())
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    tok = load_tokenizer(MODEL)
    assert (tok.mask_token_id, tok.pad_token_id) == (config.mask_token_id, config.pad_token_id)
    assert (MODEL / "CARD.md").is_file()


def test_the_reference_model_retrieves_adds_copies_and_reverses():
    model = load_reference(MODEL)
    for task in ("kv", "add", "copy", "reverse"):
        exs = examples(task, 4, 11)
        with torch.no_grad():
            texts = decode(answer_tokens(model, exs))
        assert all(is_correct(ex, text) for ex, text in zip(exs, texts)), (task, texts)

