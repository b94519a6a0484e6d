"""Which masked tokens one denoising step commits: LLaDA's fixed schedule or Fast-dLLM's confidence rules.

Every rule starts from the same proposal: at each masked position of the current block the model proposes a
token (argmax, or Gumbel-max sampling at ``temperature``) with a *confidence*, the float64 softmax probability
of that token (``"low_confidence"`` remasking) or uniform noise (``"random"``). The rules then differ only in
how many of each row's most confident proposals they keep:

- fixed schedule (LLaDA, arXiv 2502.09992): ``k`` per step from :func:`num_transfer_tokens`;
- threshold (Fast-dLLM, arXiv 2505.22618, Sec. 3.3): every proposal with confidence ``>= threshold``, and
  always at least the single most confident one, so a block always progresses;
- factor (Fast-dLLM's factor-based rule): the largest ``n`` whose sorted confidences satisfy
  ``(j + 1) * (1 - c_(j)) <= factor`` for all ``j <= n``, again at least one.

Ties in confidence go to the leftmost position (a stable sort), so a row's commits never depend on the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Generator = torch.Generator | Sequence[torch.Generator] | None


def num_transfer_tokens(masked: torch.Tensor, steps: int) -> torch.Tensor:
    """Tokens to commit per step, LongTensor ``(B, steps)``, from a block's mask ``masked`` (bool ``(B, n)``).

    Each row's masked count is spread evenly, the remainder going to the first steps: 10 over 4 -> 3, 3, 2, 2.
    """
    count = masked.sum(dim=1, keepdim=True)
    extra = torch.arange(steps, device=masked.device).unsqueeze(0) < count % steps
    return count // steps + extra.long()


def threshold_count(confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """Fast-dLLM's threshold rule: per row, how many masked proposals reach ``threshold`` (at least 1 when any
    is masked). ``confidence`` (B, n) is ``-inf`` at positions that are not masked. Returns LongTensor (B,)."""
    masked = (confidence > -torch.inf).sum(-1)
    return torch.minimum((confidence >= threshold).sum(-1).clamp_min(1), masked)


def factor_count(confidence: torch.Tensor, factor: float) -> torch.Tensor:
    """Fast-dLLM's factor rule: per row, the largest ``n`` with ``c_(j) >= 1 - factor / (j + 1)`` for every
    ``j <= n`` (sorted confidences ``c_(1) >= c_(2) >= ...``; ``j = 1`` always passes). Same input as
    :func:`threshold_count`.

    The paper states it as the largest ``n`` with ``(n + 1)(1 - c_(n)) < factor``; that product never decreases
    with ``n``, so the two agree up to the boundary (the reference code, followed here, accepts equality).
    """
    masked = (confidence > -torch.inf).sum(-1)
    ranked = confidence.sort(dim=-1, descending=True).values
    j = torch.arange(1, ranked.shape[-1] + 1, device=ranked.device, dtype=ranked.dtype)
    passes = ranked >= 1 - factor / (j + 1)
    passes[:, 0] = True
    return torch.minimum(passes.long().cumprod(-1).sum(-1), masked)


def commit(
    block_x: torch.Tensor,
    logits: torch.Tensor,
    mask_id: int,
    temperature: float,
    remasking: str,
    generator: Generator,
    *,
    k: torch.Tensor | None = None,
    threshold: float | None = None,
    factor: float | None = None,
) -> torch.Tensor:
    """One denoising step on a block ``block_x`` (B, n) given its ``logits`` (B, n, V); returns the new block.

    Exactly one of ``k`` (LongTensor (B,): the fixed schedule's count), ``threshold`` or ``factor`` picks how
    many of each row's masked positions are committed; the most confident ones are. A row with no masked
    position commits nothing.
    """
    batch, n, vocab = logits.shape
    logits = logits.double()  # float64, as the official sampler: low-precision Gumbel-max hurts (arXiv 2409.02908)
    masked = block_x == mask_id
    # Under the confidence rules rows finish a block at different calls; a finished row draws no noise from its
    # own generator, so per-row generators keep reproducing each row's solo run. (The fixed schedule keeps
    # drawing, as it always did.)
    active = masked.any(dim=-1) if k is None else None
    if temperature > 0:
        # Gumbel-max in log space: argmax(l - T log(-log u)) == argmax(exp(l) / (-log u)^T), without overflow
        u = uniform(generator, batch, (n, vocab), logits.device, active)
        proposal = (logits - temperature * torch.log(-torch.log(u))).argmax(dim=-1)
    else:
        proposal = logits.argmax(dim=-1)
    if remasking == "low_confidence":
        confidence = torch.softmax(logits, dim=-1).gather(-1, proposal.unsqueeze(-1)).squeeze(-1)
    else:
        confidence = uniform(generator, batch, (n,), logits.device, active)
    confidence = confidence.masked_fill(~masked, -torch.inf)
    if k is None:
        k = threshold_count(confidence, threshold) if threshold is not None else factor_count(confidence, factor)
    # rank by confidence (stable: ties go to the leftmost position) and keep each row's top k
    order = confidence.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(n, device=order.device).expand(batch, -1))
    chosen = (rank < k.unsqueeze(-1)) & masked
    return torch.where(chosen, proposal, block_x)


def uniform(
    generator: Generator, batch: int, shape: tuple[int, ...], device: torch.device, active: torch.Tensor | None = None
) -> torch.Tensor:
    """Float64 U[0, 1) noise ``(batch, *shape)`` drawn on the generator's device (CPU by default).

    With one generator per row, rows where ``active`` (bool (B,)) is False draw nothing and get 0.5 (unused).
    """
    if isinstance(generator, Sequence):
        on = [True] * batch if active is None else active.tolist()
        rows = [
            torch.rand(shape, generator=g, device=g.device, dtype=torch.float64).to(device)
            if use else torch.full(shape, 0.5, dtype=torch.float64, device=device)
            for g, use in zip(generator, on, strict=True)
        ]
        return torch.stack(rows)
    where = generator.device if generator is not None else torch.device("cpu")
    return torch.rand((batch, *shape), generator=generator, device=where, dtype=torch.float64).to(device)
