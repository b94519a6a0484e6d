"""Per-layer token features that dLLM-Cache (arXiv 2506.06295) keeps between denoising steps.

For every row and every token of one layer the cache holds the token's key and value (as the attention of
later steps reads them) and the two residual deltas the layer adds to it: the attention output (after
``attn_out``) and the FFN output. The residual stream itself is never stored: a reused token leaves the layer
as ``(x_in + attn) + ffn`` with its *current* input ``x_in``, so what changed in earlier layers still flows on.

Token subsets are given per row as absolute positions ``pos`` (LongTensor ``(B, n)``); rows may pick
different tokens, which is how the rows of a batch (and the two halves of a CFG batch) decide independently.

Layers that reuse the projections of unchanged tokens (``DllmCache.reuse_unchanged_qkv``) also keep each token's
query and the layer input its query/key/value were computed from: a token whose input is bitwise the same
again has exactly those projections (they depend on nothing else: its input and its fixed position).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from forecache.core.storage import nbytes

# The token addressing lives in core (forecache.core.tokens), shared with every token-level cache; the names stay
# importable from here. dLLM's ``put_tokens`` has always written in place (into the stores), so it is core's
# ``put_tokens_``; core's own ``put_tokens`` returns a copy.
from forecache.core.tokens.gather import changed_first, take_tokens
from forecache.core.tokens.gather import put_tokens_ as put_tokens

__all__ = ["LayerFeatures", "changed_first", "put_tokens", "take_tokens"]


@dataclass
class LayerFeatures:
    """One layer's cached features for all ``L`` tokens of all ``B`` rows.

    Attributes:
        k: keys (B, Hkv, L, hd), RoPE applied (positions never change within a generation).
        v: values (B, Hkv, L, hd) as of each token's last recomputation: the reference V-verify compares with.
        attn: attention residual delta (B, L, D).
        ffn: FFN residual delta (B, L, D).
        q: queries (B, H, L, hd), RoPE applied; kept only by layers that reuse unchanged tokens' projections.
        x_in: the layer input (B, L, D) each token's q/k/v were computed from; kept with ``q``.
    """

    k: Tensor
    v: Tensor
    attn: Tensor
    ffn: Tensor
    q: Tensor | None = None
    x_in: Tensor | None = None

    def write_kv(self, pos: Tensor, k: Tensor, v: Tensor) -> None:
        """Store fresh keys/values (B, Hkv, n, hd) of the tokens ``pos`` (B, n)."""
        put_tokens(self.k, pos, k, dim=2)
        put_tokens(self.v, pos, v, dim=2)

    def write_inputs(self, pos: Tensor, q: Tensor, x: Tensor) -> None:
        """Store the queries (B, H, n, hd) and the layer inputs (B, n, D) of the tokens ``pos`` (when kept)."""
        if self.q is not None and self.x_in is not None:
            put_tokens(self.q, pos, q, dim=2)
            put_tokens(self.x_in, pos, x)

    def changed(self, x: Tensor) -> Tensor | None:
        """Bool (B, L): tokens whose layer input ``x`` differs (in any bit pattern ``==`` sees; NaN always
        differs) from the one their cached projections came from; ``None`` when this layer keeps no inputs."""
        return None if self.x_in is None else ~(x == self.x_in).all(-1)

    @property
    def nbytes(self) -> int:
        return nbytes((self.k, self.v, self.attn, self.ffn, self.q, self.x_in))
