"""Log-likelihood of a continuation under a masked diffusion LM, by Monte Carlo (LLaDA, Nie et al., arXiv 2502.09992).

A masked diffusion LM has no left-to-right factorisation to read ``log p(target | prefix)`` off. LLaDA bounds it
from below by the expected, reweighted cross-entropy of the masked target tokens when a uniformly drawn number
``l`` of them (``1 <= l <= L``) is masked at random; :func:`mc_loglikelihood` estimates that bound with
``mc_num`` samples (default 128, the LLaDA evaluation's), stratifying ``l`` over each forward pass
(:func:`masked_counts`) as the released evaluation code does. Classifier-free guidance (``cfg_scale > 0``)
scores with ``uncond + (s + 1)(cond - uncond)``, the unconditional rows seeing the prefix masked.

Used by the lm-evaluation-harness model (:mod:`forecache.dllm.lm_eval_model`) for ``loglikelihood`` requests;
needs only torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["continuation_logits", "masked_counts", "mc_loglikelihood"]


def masked_counts(length: int, rows: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """How many of ``length`` continuation tokens each of ``rows`` samples masks, LongTensor ``(rows,)``.

    Stratified over the batch as LLaDA's released evaluation code does (arXiv 2502.09992): one uniform offset, the
    rows spaced ``length / rows`` apart modulo ``length``. Each count alone is uniform on ``{1, ..., length}`` (the
    estimate stays unbiased) while one batch covers the range evenly (lower variance).
    """
    offset = torch.randint(length, (1,), generator=generator)
    return (offset + torch.arange(rows) * length // rows) % length + 1


def continuation_logits(model: torch.nn.Module, x: torch.Tensor, prompt_length: int, cfg_scale: float,
                         mask_id: int) -> torch.Tensor:
    """Logits ``(B, L, V)`` at the continuation columns of ``x``; under CFG, ``uncond + (s + 1)(cond - uncond)``
    with the prompt masked in the unconditional rows (the official ``get_logits``)."""
    rows, width = x.shape
    at = torch.arange(prompt_length, width, device=x.device).expand(rows, -1)
    if cfg_scale <= 0:
        return model(x, logits_at=at)
    uncond = x.clone()
    uncond[:, :prompt_length] = mask_id
    cond, un = model(torch.cat([x, uncond]), logits_at=torch.cat([at, at])).chunk(2)
    return un + (cfg_scale + 1) * (cond - un)


@torch.no_grad()
def mc_loglikelihood(
    model: torch.nn.Module,
    prefix: Sequence[int],
    target: Sequence[int],
    *,
    mc_num: int = 128,
    batch_size: int = 32,
    cfg_scale: float = 0.0,
    mask_id: int | None = None,
    generator: torch.Generator | None = None,
) -> float:
    """Monte-Carlo estimate of ``log p(target | prefix)`` under a masked diffusion LM: the lower-variance form of
    LLaDA's conditional likelihood bound (arXiv 2502.09992).

    Each sample draws a count ``l`` uniform on ``{1..L}`` (``L = len(target)``, stratified by
    :func:`masked_counts`), masks ``l`` target positions chosen uniformly, and scores
    ``(L / l) * sum over masked i of log p(target_i | prefix, unmasked target)``; the mean over ``mc_num`` samples
    (default 128, in forward passes of ``batch_size`` rows) estimates LLaDA's lower bound on the log-likelihood.
    With ``L == 1`` every sample is the same exact value ``log p(target_0 | prefix, [MASK])``.
    """
    if len(target) == 0:
        raise ValueError("mc_loglikelihood: the target is empty; score at least one token")
    if mc_num < 1 or batch_size < 1:
        raise ValueError(f"mc_loglikelihood: mc_num={mc_num} and batch_size={batch_size} must be >= 1")
    mask_id = model.config.mask_token_id if mask_id is None else int(mask_id)
    device = next(model.parameters()).device
    P, L = len(prefix), len(target)
    seq = torch.tensor([*prefix, *target], dtype=torch.long, device=device)
    total, done = 0.0, 0
    while done < mc_num:
        rows = min(batch_size, mc_num - done)
        counts = masked_counts(L, rows, generator)
        rank = torch.rand(rows, L, generator=generator).argsort(dim=1).argsort(dim=1)  # a random order per row
        masked = (rank < counts[:, None]).to(device)  # the first `count` positions of that order
        x = seq.expand(rows, -1).clone()
        x[:, P:] = torch.where(masked, mask_id, x[:, P:])
        logits = continuation_logits(model, x, P, cfg_scale, mask_id).float()
        nll = F.cross_entropy(logits.flatten(0, 1), seq[P:].repeat(rows), reduction="none").view(rows, L)
        total += ((nll * masked).sum(dim=1) * L / counts.to(device)).sum().item()
        done += rows
    return -total / mc_num
