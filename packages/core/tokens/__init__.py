"""Batched token-level compute: recompute a per-row token subset ``pos`` (B, n) in one call.

- :mod:`.gather`: :func:`take_tokens`, :func:`put_tokens` / :func:`put_tokens_`, :func:`changed_first`;
- :mod:`.attention`: :func:`attend_stored`, fresh queries over stored keys/values (GQA, padding mask);
- :mod:`.compute`: :class:`TokenCompute`, a token-wise module on the subset, merged into the cached output;
- :mod:`.flops`: analytic FLOPs in ``FlopCounterMode``'s convention, for work whose size varies per call.

Token sites over stored K/V (dllm, edit, video) and ToCa build on these; none of them is bound to a model.
"""

from .attention import attend_stored
from .compute import TokenCompute, TokenOutput
from .flops import FlopTally, attention_flops, linear_flops, mlp_flops, tokenwise_flops
from .gather import changed_first, put_tokens, put_tokens_, take_tokens

__all__ = [
    "FlopTally", "TokenCompute", "TokenOutput", "attend_stored", "attention_flops", "changed_first",
    "linear_flops", "mlp_flops", "put_tokens", "put_tokens_", "take_tokens", "tokenwise_flops",
]
