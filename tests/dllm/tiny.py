"""The tiny random LLaDAs the dllm tests share, and a way to drive a cache state by hand."""

import functools

import torch
from forecache.core.wrapping import Wrapping
from forecache.dllm.config import LLaDAConfig
from forecache.dllm.model import LLaDAModel

VOCAB, MASK = 64, 63


def tiny_llada(
    n_layers: int = 3, seed: int = 0, d_model: int = 32, mlp: int = 64, vocab: int = VOCAB, confident: bool = False,
    **config,
) -> LLaDAModel:
    """Random weights, grouped-query attention (4 query heads over 2 key/value heads); the head never proposes
    the mask (the last token id: its row is zero, the other logits are random), so answers fill with real tokens
    and a cache sees inputs change, as with a trained model. ``confident``: weights larger than the default init
    (embeddings 1.0, matrices 0.3), so threshold decoding commits several tokens in some calls."""
    settings = dict(
        d_model=d_model, n_heads=4, n_kv_heads=2, n_layers=n_layers, mlp_hidden_size=mlp, vocab_size=vocab,
        embedding_size=vocab, max_sequence_length=128, mask_token_id=vocab - 1,
    )
    torch.manual_seed(seed)
    model = LLaDAModel(LLaDAConfig(**{**settings, **config})).eval()
    with torch.no_grad():
        if confident:
            for name, p in model.named_parameters():
                if p.dim() == 2:
                    p.normal_(std=1.0 if name.startswith("wte") else 0.3)
        model.ff_out.weight[vocab - 1] = 0.0
    return model


def run_layers(model: LLaDAModel, runner, *args, **kwargs) -> torch.Tensor:
    """``model(*args, **kwargs)`` with every layer run by ``runner(i, block, x, cos, sin, key_mask)`` (a dLLM cache
    state's), wrapped on the blocks as the LLaDA site wraps them: a state driven by hand, without a handle."""
    wrapping, inside = Wrapping(), []

    def run(i, block, original, x, cos, sin, key_mask):
        if inside:  # the runner called the layer itself: run it as written
            return original(x, cos, sin, key_mask)
        inside.append(i)
        try:
            return runner(i, block, x, cos, sin, key_mask)
        finally:
            inside.pop()

    for i, block in enumerate(model.blocks):
        wrapping.wrap(block, functools.partial(run, i, block), "run_layers")
    try:
        return model(*args, **kwargs)
    finally:
        wrapping.unwrap_all()
