"""The layout of the sequence a LLaDA sampler decodes, told to the caches through a context.

A dLLM cache needs to know which columns of the model's input are the prompt and which the answer, and how the
answer is split into blocks; the model's call does not say. Like vLLM's forward context, the sampler states it
once around a generation (:func:`sequence_layout`) and the cache reads it (:func:`current_layout`), so neither
the model's signature nor core's runtime carries it.

Layout of the model's input ``x`` (LongTensor ``(B', L)``, ``L = prompt_length + gen_length``): columns
``[0, prompt_length)`` are the left-padded prompt (pads have ``attention_mask == 0``; they never change), columns
``[prompt_length, L)`` the answer, split into ``gen_length // block_length`` blocks decoded left to right. Masked
answer positions hold the mask id; a committed token never changes again. Under classifier-free guidance
``B' = 2B``: the conditional rows, then the same rows with every real prompt token replaced by the mask id.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["SequenceLayout", "current_layout", "sequence_layout"]


@dataclass(frozen=True)
class SequenceLayout:
    """``prompt_length`` prompt columns, then ``gen_length`` answer columns in blocks of ``block_length``."""

    prompt_length: int
    gen_length: int
    block_length: int

    def __post_init__(self) -> None:
        if self.prompt_length < 0 or self.gen_length < 1:
            raise ValueError(
                f"SequenceLayout: prompt_length={self.prompt_length}, gen_length={self.gen_length}; need >= 0 and >= 1"
            )
        if self.block_length < 1 or self.gen_length % self.block_length:
            raise ValueError(
                f"SequenceLayout: block_length={self.block_length} does not divide gen_length={self.gen_length}; "
                "choose a block_length that divides it"
            )


_LAYOUT: ContextVar[SequenceLayout | None] = ContextVar("forecache_dllm_layout", default=None)


@contextlib.contextmanager
def sequence_layout(prompt_length: int, gen_length: int, block_length: int) -> Iterator[SequenceLayout]:
    """``with sequence_layout(P, R, block):`` the model calls inside decode that layout (the sampler sets it; a
    custom sampler driving a cached LLaDA through ``handle.step`` sets it around each generation)."""
    token = _LAYOUT.set(SequenceLayout(prompt_length, gen_length, block_length))
    try:
        yield _LAYOUT.get()
    finally:
        _LAYOUT.reset(token)


def current_layout(who: str) -> SequenceLayout:
    """The layout set by the innermost :func:`sequence_layout`; ``who`` names the caller in the error raised when
    none is set."""
    layout = _LAYOUT.get()
    if layout is None:
        raise RuntimeError(
            f"{who}: the model was called outside a LLaDA generation, so the cache does not know which columns "
            "are the prompt and which the answer; decode with forecache.dllm.generate, or wrap a custom "
            "sampler's calls in `with forecache.dllm.sequence_layout(prompt_length, gen_length, block_length):`"
        )
    return layout
