"""LLaDA, written natively: a LLaMA-style transformer with bidirectional attention.

LLaDA (Nie et al., arXiv:2502.09992) predicts every masked token of a sequence at once; each denoising
step is one full forward pass. This module reproduces the computation of LLaDA's ``LLaDALlamaBlock``
(pre-norm RMSNorm, RoPE with the rotate-half convention, SDPA attention without a causal mask, SwiGLU MLP)
with parameter names that match the official checkpoint, and exposes the pieces of a block
(``project_qk``, ``project_v``, ``attend`` (the attention, then ``project_out``), ``ffn``) so that a cache such
as dLLM-Cache (arXiv:2506.06295) can recompute only some tokens of some layers. The model knows nothing of
caching: a cache wraps its blocks through core's runtime (:mod:`forecache.dllm.site`).

One deliberate difference from LLaDA's code: positions are counted per row from ``attention_mask``, so a
left-padded row gets exactly the positions (and so the logits) it gets alone. LLaDA's code uses
``0..L-1`` for every row; the two agree on unpadded input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import LLaDAConfig

class RMSNorm(nn.Module):
    """LLaDA's RMSNorm: normalise in float32, cast back to the input dtype, then scale (and shift)."""

    def __init__(self, dim: int, eps: float, bias: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        h = self.weight * h
        return h if self.bias is None else h + self.bias


def rotate_half(x: Tensor) -> Tensor:
    """``[x1, x2] -> [-x2, x1]`` over the two halves of the last dimension (LLaDA's and LLaMA-HF's layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(t: Tensor, cos: Tensor, sin: Tensor, full_precision: bool = True) -> Tensor:
    """Rotate ``t`` (B, heads, n, hd) by ``cos``/``sin`` (B, n, hd); float32 when ``full_precision``."""
    t_ = t.float() if full_precision else t
    cos, sin = cos[:, None].to(t_.dtype), sin[:, None].to(t_.dtype)
    return (t_ * cos + rotate_half(t_) * sin).to(t.dtype)


class LLaDABlock(nn.Module):
    """One pre-norm transformer layer: ``x += attend(q, k, v)`` then ``x += ffn(x)``.

    Every piece works on any subset of tokens, given those tokens' ``cos``/``sin``: queries for some
    tokens may attend to keys and values computed (or cached) for others.
    """

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__()
        c = config
        self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.effective_n_kv_heads, c.head_dim
        self.rope_full_precision = c.rope_full_precision
        kv_dim = self.n_kv_heads * self.head_dim
        self.attn_norm = RMSNorm(c.d_model, c.rms_norm_eps, c.norm_bias)
        self.ff_norm = RMSNorm(c.d_model, c.rms_norm_eps, c.norm_bias)
        self.q_proj = nn.Linear(c.d_model, c.d_model, bias=c.qkv_bias)
        self.k_proj = nn.Linear(c.d_model, kv_dim, bias=c.qkv_bias)
        self.v_proj = nn.Linear(c.d_model, kv_dim, bias=c.qkv_bias)
        self.attn_out = nn.Linear(c.d_model, c.d_model, bias=c.include_bias)
        self.ff_proj = nn.Linear(c.d_model, c.ffn_hidden_size, bias=c.include_bias)  # gate: silu(ff_proj(h))
        self.up_proj = nn.Linear(c.d_model, c.ffn_hidden_size, bias=c.include_bias)
        self.ff_out = nn.Linear(c.ffn_hidden_size, c.d_model, bias=c.include_bias)

    def _heads(self, t: Tensor, heads: int) -> Tensor:
        b, n, _ = t.shape
        return t.view(b, n, heads, self.head_dim).transpose(1, 2)

    def project_qk(self, h: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        """``h = attn_norm(x)`` (B, n, D) -> q (B, H, n, hd), k (B, Hkv, n, hd), both rotated by RoPE."""
        q = self._heads(self.q_proj(h), self.n_heads)
        k = self._heads(self.k_proj(h), self.n_kv_heads)
        return apply_rope(q, cos, sin, self.rope_full_precision), apply_rope(k, cos, sin, self.rope_full_precision)

    def project_v(self, h: Tensor) -> Tensor:
        """``h = attn_norm(x)`` (B, n, D) -> v (B, Hkv, n, hd)."""
        return self._heads(self.v_proj(h), self.n_kv_heads)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
        """Bidirectional attention of ``q`` (B, H, n, hd) over ``k``/``v`` (B, Hkv, m, hd), then ``attn_out``.

        ``key_mask``: bool, broadcastable to (B, 1, 1, m), True where a key may be attended to; ``None``
        attends to all keys. Returns (B, n, D).
        """
        if self.n_kv_heads != self.n_heads:
            # Grouped-query attention: kv head j serves query heads j*r .. j*r+r-1, as repeat_interleave lays out.
            r = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(r, dim=1), v.repeat_interleave(r, dim=1)
        return self.project_out(F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask))

    def project_out(self, heads: Tensor) -> Tensor:
        """The attention output per head (B, H, n, hd) -> heads merged, then ``attn_out``: (B, n, D). The step
        after the attention itself, for a caller that attends on its own (fresh queries over stored keys/values,
        :func:`forecache.core.tokens.attend_stored`)."""
        b, _, n, _ = heads.shape
        return self.attn_out(heads.transpose(1, 2).reshape(b, n, self.n_heads * self.head_dim))

    def ffn(self, x: Tensor) -> Tensor:
        """The SwiGLU MLP with its pre-norm: ``ff_out(silu(ff_proj(h)) * up_proj(h))``, ``h = ff_norm(x)``."""
        h = self.ff_norm(x)
        return self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, key_mask: Tensor | None) -> Tensor:
        h = self.attn_norm(x)
        q, k = self.project_qk(h, cos, sin)
        x = x + self.attend(q, k, self.project_v(h), key_mask)
        return x + self.ffn(x)


class LLaDAModel(nn.Module):
    """LLaDA's mask predictor: token ids -> logits over the vocabulary at every position.

    Submodules are named as the official checkpoint names them under ``model.transformer``: ``wte``,
    ``blocks``, ``ln_f`` and ``ff_out`` (absent when ``config.weight_tying``; the head is then ``wte``).
    """

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.num_embeddings, config.d_model)
        self.blocks = nn.ModuleList(LLaDABlock(config) for _ in range(config.n_layers))
        self.ln_f = RMSNorm(config.d_model, config.rms_norm_eps, config.norm_bias)
        self.ff_out = (
            None
            if config.weight_tying
            else nn.Linear(config.d_model, config.num_embeddings, bias=config.include_bias)
        )

    def rope(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """``cos``, ``sin`` (B, L, head_dim), float32, for integer ``positions`` (B, L).

        Frequencies ``theta ** (-2i / head_dim)``, duplicated over the two halves (rotate-half layout).
        Computed on the fly in float32 rather than kept as a buffer, which ``model.to(bfloat16)`` would round.
        """
        hd = self.config.head_dim
        inv_freq = 1.0 / (
            self.config.rope_theta ** (torch.arange(0, hd, 2, device=positions.device, dtype=torch.float32) / hd)
        )
        freqs = positions.to(torch.float32)[..., None] * inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos(), angles.sin()

    def positions(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        """Per-row positions (B, L): ``cumsum(attention_mask) - 1`` clamped at 0, or ``0..L-1`` without a mask."""
        b, length = input_ids.shape
        if attention_mask is None:
            return torch.arange(length, device=input_ids.device).expand(b, length)
        return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)

    def head(self, x: Tensor) -> Tensor:
        """Final norm and output projection of hidden states (B, n, D) -> logits (B, n, V)."""
        x = self.ln_f(x)
        return F.linear(x, self.wte.weight) if self.ff_out is None else self.ff_out(x)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        logits_at: Tensor | None = None,
    ) -> Tensor:
        """Logits (B, L, V) for ``input_ids`` (B, L); (B, n, V) at ``logits_at`` (B, n) positions only.

        ``attention_mask`` (B, L): 1 for real tokens, 0 for padding; padded keys are masked out and
        positions count real tokens only. Each block is called as ``block(x, cos, sin, key_mask)``, ``key_mask``
        bool (B, 1, 1, L), True where a key may be attended to (a cache wraps the blocks: :mod:`forecache.dllm.site`).
        """
        if input_ids.dim() != 2:
            raise ValueError(f"LLaDAModel: input_ids must be (batch, length), got shape {tuple(input_ids.shape)}.")
        b, length = input_ids.shape
        if attention_mask is None:
            key_mask = torch.ones(b, 1, 1, length, dtype=torch.bool, device=input_ids.device)
        else:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(
                    f"LLaDAModel: attention_mask shape {tuple(attention_mask.shape)} differs from input_ids "
                    f"shape {tuple(input_ids.shape)}; pass one mask entry per token."
                )
            key_mask = attention_mask.bool()[:, None, None, :]
            if not bool(key_mask.any(-1).all()):
                # SDPA would return NaN for a row with no key to attend to.
                raise ValueError("LLaDAModel: a row of attention_mask is all zeros; every row needs a real token.")
        cos, sin = self.rope(self.positions(input_ids, attention_mask))
        x = self.wte(input_ids)
        for block in self.blocks:
            x = block(x, cos, sin, key_mask)
        if logits_at is not None:
            # The head is the widest matmul (D x V); running it only where logits are read is lossless.
            x = x.gather(1, logits_at[..., None].expand(-1, -1, x.shape[-1]))
        return self.head(x)
