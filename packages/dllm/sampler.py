"""The LLaDA sampler: semi-autoregressive masked-diffusion decoding (Nie et al., arXiv 2502.09992, Sec. 2.4, App. B).

The answer starts fully masked and is split into ``gen_length // block_length`` blocks decoded left to right.
Each block gets ``steps // num_blocks`` model calls; the masked tokens of a block are committed evenly over
them (LLaDA's linear noise schedule makes the expected number per step constant). At every step the model
proposes a token for every masked position (argmax, or Gumbel-max sampling at ``temperature``) and the
sampler keeps the scheduled number of them: the most confident ones (``"low_confidence"`` remasking, the
rest stay masked) or random ones (``"random"``). Only the current block can be committed, so the model is
asked for the logits of that block alone (``logits_at``), which is lossless.

Fast-dLLM's confidence-aware parallel decoding (Wu et al., arXiv 2505.22618) replaces the fixed schedule
when ``threshold`` or ``factor`` is given: each step commits every proposal confident enough (at least one per
row), and a block ends as soon as it has no mask left, so the number of model calls per block varies (at most
``block_length``) and ``steps`` is ignored, as in the reference code. Rows of a batch step together; a row whose
block is done commits nothing until the others finish it. The rules live in :mod:`forecache.dllm.decoding`.

A cache plugs in through ``cache``: a core policy (a dLLM preset), a dLLM cache method, or a handle already on the
model (:func:`~forecache.dllm.adapter.cache_llada`). The sampler drives the handle's clock, one step per model
call, ``handle.step(step, segment=block)``: ``step`` counts the generation's calls from 0; under a threshold or
factor, block ``b`` owns a variable number of them. The layout of the sequence reaches the cache through
:func:`~forecache.dllm.layout.sequence_layout`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from forecache.core.handle import CacheHandle
from forecache.core.policy import Policy

from .adapter import cache_llada
from .decoding import Generator, commit, num_transfer_tokens
from .layout import sequence_layout
from .site import LLaDASite, llada_policy

__all__ = ["REMASKING", "generate", "num_transfer_tokens", "pad_prompts"]

REMASKING = ("low_confidence", "random")


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token-id lists into ``(input_ids, attention_mask)``, both LongTensor ``(B, max_len)``.

    Left padding keeps every answer starting at the same column, which the block schedule relies on.
    """
    if len(prompts) == 0:
        raise ValueError("pad_prompts got no prompts; pass a non-empty list of token-id lists")
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {i} is empty; give every prompt at least one token (e.g. a BOS token)")
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        input_ids[i, width - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
        attention_mask[i, width - len(prompt) :] = 1
    return input_ids, attention_mask


@torch.no_grad()
def generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    steps: int = 128,
    gen_length: int = 128,
    block_length: int = 128,
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    remasking: str = "low_confidence",
    mask_id: int | None = None,
    cache: Policy | CacheHandle | Any = None,
    generator: Generator = None,
    progress: bool = False,
    return_stats: bool = False,
    threshold: float | None = None,
    factor: float | None = None,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
    """Generate ``gen_length`` tokens after each prompt with LLaDA's sampler (arXiv 2502.09992).

    Args:
        model: a ``LLaDAModel`` (anything with ``config.mask_token_id``, ``config.max_sequence_length``,
            ``config.vocab_size``/``embedding_size`` and ``forward(ids, mask, *, logits_at)``).
        input_ids: LongTensor ``(B, P)``, left-padded prompts (see :func:`pad_prompts`).
        attention_mask: ``(B, P)``, 1 on prompt tokens and 0 on the left pads; ``None`` = no padding.
        steps: model calls in total (default 128), a multiple of ``gen_length // block_length``; ignored (not
            even checked) under ``threshold`` or ``factor``, which end a block when it has no mask left.
        gen_length: answer length (default 128). block_length: block size (default 128 = one block).
        temperature: Gumbel-max sampling temperature; 0 (default) = greedy argmax.
        cfg_scale: unsupervised classifier-free guidance scale (default 0 = off). When > 0 the model sees one
            batch of 2B rows, conditional rows first, then the same rows with the prompt masked, and the logits
            are ``uncond + (cfg_scale + 1) * (cond - uncond)``.
        remasking: ``"low_confidence"`` (default; keep the most probable proposals) or ``"random"``.
        mask_id: the [MASK] id; default ``model.config.mask_token_id`` (126336 for LLaDA-8B).
        cache: a core policy from a dLLM preset (``dllm_cache()``, ``fast_dllm_cache()``, ``with_prefix(...)``,
            ``fast_dllm().policy()``) or a dLLM cache method (``DllmCache(...)``): applied to ``model`` for this
            call and removed after it; or a handle already applied to ``model`` (``cache_llada(model, policy)``),
            kept, so its stats and trace span the requests it serves. Each call is one generation of it.
        generator: one ``torch.Generator``, or one per row (then each row samples exactly as it would alone, also
            under ``threshold``/``factor``: a row whose block is done draws no noise while the others finish it).
            Noise is drawn on the generator's device (CPU by default) so results do not depend on the model's.
        progress: show a tqdm bar over steps. return_stats: also return a stats dict.
        threshold: Fast-dLLM's confidence threshold in (0, 1] (arXiv 2505.22618; 0.9 in its evaluation): each
            step commits every masked token of the block whose confidence (the remasking score) is >= threshold,
            and at least the most confident one per row. Default None = LLaDA's fixed schedule.
        factor: Fast-dLLM's factor-based rule, > 0 (1.0 in its evaluation), instead of ``threshold``: commit
            the largest n whose sorted confidences satisfy ``(j + 1)(1 - c_(j)) <= factor`` for all j <= n.

    Returns:
        LongTensor ``(B, P + gen_length)``: the prompts followed by the answers; with ``return_stats`` the
        tuple ``(tokens, {"steps", "blocks", "model_calls", "batch", "cache"})`` (``steps`` = model calls made);
        under ``threshold``/``factor`` also ``"threshold"``, ``"factor"``, ``"calls_per_block"``, ``"row_calls"``
        (per row, the calls in which its block still had a mask) and ``"tokens_per_call"`` (``gen_length`` /
        model calls). With a cache, ``"cache"`` is its telemetry of this generation (``handle.stats().details``)
        and ``"trace"`` the handle's core ``Trace`` of decisions (``.to_json()``; a handle passed in keeps every
        generation's).
    """
    mask_id = model.config.mask_token_id if mask_id is None else int(mask_id)
    parallel = _validate_parallel(threshold, factor)
    num_blocks, prompt_mask = _validate(
        model, input_ids, attention_mask, None if parallel else steps, gen_length, block_length, temperature,
        cfg_scale, remasking, mask_id,
    )
    batch, prompt_length = input_ids.shape
    if isinstance(generator, Sequence) and len(generator) != batch:
        raise ValueError(f"got {len(generator)} generators for {batch} rows; pass one generator, or one per row")
    device = input_ids.device
    guided = cfg_scale > 0  # the official sampler skips the unconditional pass at scale 0, so do we
    x = torch.full((batch, prompt_length + gen_length), mask_id, dtype=torch.long, device=device)
    x[:, :prompt_length] = input_ids
    uncond_prompt = torch.where(prompt_mask, mask_id, input_ids)  # pads stay pads: they are never attended
    model_mask = None
    if attention_mask is not None:
        answer_ones = torch.ones(batch, gen_length, dtype=torch.long, device=device)
        model_mask = torch.cat([attention_mask.long(), answer_ones], dim=1)
        model_mask = torch.cat([model_mask, model_mask]) if guided else model_mask
    per_block = steps // num_blocks
    with _caching(model, cache, prompt_length, gen_length, block_length) as handle:
        step = 0
        calls_per_block: list[int] = []
        row_calls = torch.zeros(batch, dtype=torch.long, device=device)
        with tqdm(total=None if parallel else steps, desc="LLaDA sampling", disable=not progress) as bar:
            for block in range(num_blocks):
                cols = slice(prompt_length + block * block_length, prompt_length + (block + 1) * block_length)
                schedule = None if parallel else num_transfer_tokens(x[:, cols] == mask_id, per_block)
                at = torch.arange(cols.start, cols.stop, device=device).expand(2 * batch if guided else batch, -1)
                i = 0
                # the fixed schedule runs its steps even when they commit nothing (as LLaDA's code does); the
                # confidence rules stop when no row of the batch has a mask left in the block
                while (i < per_block) if schedule is not None else bool((x[:, cols] == mask_id).any()):
                    seen = torch.cat([x, torch.cat([uncond_prompt, x[:, prompt_length:]], dim=1)]) if guided else x
                    if handle is not None:
                        handle.step(step, segment=block)
                    logits = model(seen, model_mask, logits_at=at)
                    if guided:
                        cond, uncond = logits.chunk(2)
                        logits = uncond + (cfg_scale + 1) * (cond - uncond)
                    row_calls += (x[:, cols] == mask_id).any(dim=1)
                    k = None if schedule is None else schedule[:, i]
                    x[:, cols] = commit(x[:, cols], logits, mask_id, temperature, remasking, generator, k=k,
                                        threshold=threshold, factor=factor)
                    i += 1
                    step += 1
                    bar.update()
                calls_per_block.append(i)
        telemetry = None if handle is None or not return_stats else (
            handle.stats().details.get(LLaDASite.NAME), handle.trace())
    if not return_stats:
        return x
    stats: dict[str, Any] = {"steps": step, "blocks": num_blocks, "model_calls": step}
    stats["batch"] = 2 * batch if guided else batch
    if parallel:
        stats |= {"threshold": threshold, "factor": factor, "calls_per_block": calls_per_block,
                  "row_calls": row_calls.tolist(), "tokens_per_call": gen_length / max(step, 1)}
    stats["cache"] = None if telemetry is None else telemetry[0]
    if telemetry is not None:
        stats["trace"] = telemetry[1]  # the cache's refresh decisions, a core Trace (.to_json())
    return x, stats


@contextlib.contextmanager
def _caching(
    model: nn.Module, cache: Any, prompt_length: int, gen_length: int, block_length: int
) -> Iterator[CacheHandle | None]:
    """The handle that caches one generation (None: uncached), a new generation of it, inside the sequence's
    layout; a handle the sampler made for it is removed after it."""
    if cache is None:
        yield None
        return
    owned = not isinstance(cache, CacheHandle)
    if not owned and (cache.model is not model or cache.removed):
        raise ValueError("cache= is a handle on another model (or removed); apply it to this model "
                         "(cache_llada(model, policy)) or pass the policy")
    if owned and not isinstance(cache, Policy):
        if not callable(getattr(cache, "start", None)):
            raise ValueError(f"cache={cache!r} is not a dLLM cache; pass a preset's policy (dllm_cache(), "
                             "fast_dllm_cache()), a method (DllmCache(...)), a handle, or None")
        cache = llada_policy(cache, type(cache).__name__, "")
    handle = cache_llada(model, cache) if owned else cache
    try:
        with sequence_layout(prompt_length, gen_length, block_length):
            handle.reset()  # each request is one generation of the handle
            yield handle
    finally:
        if owned:
            handle.remove()


def _validate_parallel(threshold: float | None, factor: float | None) -> bool:
    """Check Fast-dLLM's knobs; True when one of them replaces the fixed schedule."""
    if threshold is not None and factor is not None:
        raise ValueError(
            f"threshold={threshold} and factor={factor} are both set; they are alternative commit rules, pass one"
        )
    if threshold is not None and (isinstance(threshold, bool) or not 0.0 < float(threshold) <= 1.0):
        raise ValueError(f"threshold={threshold!r} must be in (0, 1] (0.9 in Fast-dLLM); None = fixed schedule")
    if factor is not None and (isinstance(factor, bool) or not float(factor) > 0.0):
        raise ValueError(f"factor={factor!r} must be > 0 (1.0 in Fast-dLLM); None = fixed schedule")
    return threshold is not None or factor is not None


def _validate(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    steps: int | None,
    gen_length: int,
    block_length: int,
    temperature: float,
    cfg_scale: float,
    remasking: str,
    mask_id: int,
) -> tuple[int, torch.Tensor]:
    """Check the arguments of :func:`generate` (``steps=None``: not used); return the number of blocks and the
    prompt mask (bool ``(B, P)``)."""
    if input_ids.dim() != 2 or input_ids.shape[0] == 0:
        raise ValueError(
            f"input_ids has shape {tuple(input_ids.shape)}; pass a non-empty (batch, prompt_length) LongTensor "
            "(pad_prompts builds one from token-id lists)"
        )
    if gen_length <= 0 or block_length <= 0 or gen_length % block_length:
        raise ValueError(
            f"gen_length={gen_length} is not a positive multiple of block_length={block_length}; "
            "choose a block_length that divides gen_length"
        )
    num_blocks = gen_length // block_length
    if steps is not None and (steps < num_blocks or steps % num_blocks):
        raise ValueError(
            f"steps={steps} is not a positive multiple of the number of blocks ({num_blocks} = gen_length / "
            f"block_length); use steps = k * {num_blocks} or fewer blocks"
        )
    config = model.config
    total = input_ids.shape[1] + gen_length
    if total > config.max_sequence_length:
        raise ValueError(
            f"prompt ({input_ids.shape[1]}) + gen_length ({gen_length}) = {total} tokens exceeds "
            f"model.config.max_sequence_length={config.max_sequence_length}; shorten the prompt or gen_length"
        )
    vocab = getattr(config, "embedding_size", None) or config.vocab_size
    if not 0 <= mask_id < vocab:
        raise ValueError(f"mask_id={mask_id} is outside the vocabulary [0, {vocab}); pass the model's mask token id")
    if remasking not in REMASKING:
        raise ValueError(f"unknown remasking {remasking!r}; use one of {REMASKING}")
    if temperature < 0 or cfg_scale < 0:
        raise ValueError(f"temperature={temperature} and cfg_scale={cfg_scale} must be >= 0; 0 turns each off")
    if attention_mask is None:
        prompt_mask = torch.ones_like(input_ids, dtype=torch.bool)
    else:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids {tuple(input_ids.shape)}; "
                "pass one 0/1 entry per prompt token"
            )
        if not ((attention_mask == 0) | (attention_mask == 1)).all():
            raise ValueError("attention_mask must hold only 0 (pad) and 1 (token); convert it before calling")
        prompt_mask = attention_mask.bool()
        if (prompt_mask[:, :-1] & ~prompt_mask[:, 1:]).any():
            raise ValueError("attention_mask has a 0 after a 1 (right padding); pad prompts on the left (pad_prompts)")
    if (input_ids[prompt_mask] == mask_id).any():
        raise ValueError(
            f"a prompt contains the mask id {mask_id}; remove it from the prompt (only answer positions are masked)"
        )
    return num_blocks, prompt_mask
