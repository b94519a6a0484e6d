"""Matmul FLOPs of a LLaDA forward pass, counted from the layer shapes as a cache computes them.

A cache such as dLLM-Cache (arXiv 2506.06295) recomputes different tokens of different layers, so its cost is
not "tokens computed x cost per token": value projections run for V-verify's candidates, query/key projections
for the recomputed tokens only, attention for the recomputed queries over *every* key. :class:`FlopTally` adds
these pieces up with the convention of ``torch.utils.flop_counter.FlopCounterMode``: 2 FLOPs per multiply-add
of every matmul (a linear layer on ``n`` tokens is ``2 n fan_in fan_out``; its bias add is not counted),
attention as its two batched matmuls (``q k^T`` and ``p v``: ``4 n_q n_k heads head_dim``); norms, RoPE,
softmax and the cosines of V-verify are not counted. The counts are core's analytic ones
(:mod:`forecache.core.tokens.flops`), applied here to LLaDA's matmuls. With the math SDPA backend (the one
``FlopCounterMode`` can see on CPU; the fused CPU kernel is not counted by it at all) the tally equals the measured
count exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from forecache.core.tokens.flops import attention_flops, linear_flops


@dataclass(frozen=True)
class LayerShapes:
    """The matmul shapes of one LLaDA layer and of the output head (all layers are alike)."""

    d_model: int
    q_dim: int  # n_heads * head_dim (q_proj's out features, attn_out's in features)
    kv_dim: int  # n_kv_heads * head_dim
    n_heads: int
    head_dim: int
    ffn_hidden: int
    vocab: int  # the head's out features

    @classmethod
    def of(cls, model: nn.Module) -> LayerShapes:
        """Read the shapes off a ``LLaDAModel``'s first block and head (so a checkpoint's own sizes count)."""
        block = model.blocks[0]
        head = model.ff_out if getattr(model, "ff_out", None) is not None else model.wte
        vocab = head.out_features if isinstance(head, nn.Linear) else head.num_embeddings
        return cls(
            d_model=block.q_proj.in_features, q_dim=block.q_proj.out_features, kv_dim=block.k_proj.out_features,
            n_heads=block.n_heads, head_dim=block.head_dim, ffn_hidden=block.ff_proj.out_features, vocab=vocab,
        )


@dataclass
class FlopTally:
    """A running FLOP count; each method adds one kind of work for ``tokens`` tokens (summed over rows).

    The pieces are core's analytic counts (:mod:`forecache.core.tokens.flops`: ``linear_flops``,
    ``attention_flops``) on this model's shapes; this class only knows which matmuls a LLaDA layer runs.
    """

    shapes: LayerShapes
    total: int = 0

    def q(self, tokens: int) -> None:
        self.total += linear_flops(tokens, self.shapes.d_model, self.shapes.q_dim)

    def k(self, tokens: int) -> None:
        self.total += linear_flops(tokens, self.shapes.d_model, self.shapes.kv_dim)

    v = k  # the value projection has the key projection's shape

    def attention(self, queries: int, keys: int) -> None:
        """``queries`` (summed over rows) each attending over ``keys`` keys (masked keys are computed too)."""
        self.total += attention_flops(queries, keys, self.shapes.n_heads, self.shapes.head_dim)

    def out_ffn(self, tokens: int) -> None:
        """``attn_out`` and the SwiGLU MLP (gate, up, down) of ``tokens`` tokens."""
        s = self.shapes
        self.total += (linear_flops(tokens, s.q_dim, s.d_model) + 2 * linear_flops(tokens, s.d_model, s.ffn_hidden)
                       + linear_flops(tokens, s.ffn_hidden, s.d_model))

    def head(self, tokens: int) -> None:
        self.total += linear_flops(tokens, self.shapes.d_model, self.shapes.vocab)

    def span(self, tokens: int, keys: int) -> None:
        """One layer computed for ``tokens`` tokens (summed over rows), their queries attending over ``keys``
        keys per row: projections, attention, ``attn_out`` and FFN."""
        self.q(tokens)
        self.k(tokens)
        self.v(tokens)
        self.attention(tokens, keys)
        self.out_ffn(tokens)

    def full_layer(self, rows: int, length: int) -> None:
        """One layer computed for every token of ``rows`` rows of ``length`` tokens, as ``LLaDABlock.forward``."""
        self.span(rows * length, length)
