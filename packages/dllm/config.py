"""LLaDA's configuration, read from and written to the official flat ``config.json``.

LLaDA (Nie et al., "Large Language Diffusion Models", arXiv:2502.09992) is a LLaMA-style transformer
with bidirectional attention, trained as a masked diffusion model. Its ``config.json`` (as published
with GSAI-ML/LLaDA-8B-Instruct) is flat, in the field names of LLaDA's own ``configuration_llada.py``.
The defaults below are LLaDA-8B-Instruct's values, so ``LLaDAConfig()`` describes that model.

Fields that do not change inference (initialisation, dropout, ``auto_map``, ...) are kept verbatim in
``extra`` so that ``from_json`` then ``to_json`` writes back the same content.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Fields that select an architecture variant. forecache implements the variant LLaDA-8B uses; a config
# asking for another one is refused instead of being run silently as the wrong model.
_REQUIRED_VALUES: dict[str, tuple[Any, ...]] = {
    "activation_type": ("silu",),
    "block_type": ("llama",),
    "layer_norm_type": ("rms",),
    "layer_norm_with_affine": (True,),
    "rope": (True,),
    "alibi": (False,),
    "attention_layer_norm": (False,),
    "input_emb_norm": (False,),
    "scale_logits": (False,),
}

# Fields a config.json must carry to be taken for a LLaDA config: without them the defaults (the 8B
# model) would silently stand in for whatever the file describes.
_REQUIRED_KEYS = ("d_model", "n_heads", "n_layers", "vocab_size")


@dataclass
class LLaDAConfig:
    """The architecture fields of LLaDA's ``config.json``; defaults are LLaDA-8B-Instruct's.

    Attributes:
        d_model: hidden size (4096).
        n_heads: query heads (32).
        n_kv_heads: key/value heads; ``None`` means ``n_heads`` (or 1 with ``multi_query_attention``). 32.
        n_layers: transformer blocks (32).
        mlp_hidden_size: SwiGLU inner width; ``None`` means ``mlp_ratio * d_model``. 12288.
        mlp_ratio: used only when ``mlp_hidden_size`` is ``None`` (4).
        vocab_size: tokenizer vocabulary (126464).
        embedding_size: rows of the embedding and of the output head; ``None`` means ``vocab_size`` (126464).
        max_sequence_length: the training context (4096); informative, not enforced.
        rope_theta: RoPE base (500000.0).
        rope_full_precision: rotate q and k in float32 whatever the model dtype (True).
        rms_norm_eps: RMSNorm epsilon (1e-5).
        include_bias: biases on every linear layer (False).
        include_qkv_bias: biases on q/k/v projections only (False).
        bias_for_layer_norm: RMSNorm bias; ``None`` inherits ``include_bias`` (False).
        weight_tying: output head shares the token embedding (False: LLaDA-8B has its own ``ff_out``).
        mask_token_id: the ``[MASK]`` token the diffusion fills in (126336).
        eos_token_id, pad_token_id: ``<|endoftext|>`` (126081).
        activation_type, block_type, layer_norm_type, layer_norm_with_affine, rope, alibi,
        attention_layer_norm, input_emb_norm, scale_logits, multi_query_attention: variant switches of
        LLaDA's code; only LLaDA-8B's values are supported (see ``_REQUIRED_VALUES``).
        extra: every other key of the file, kept for the round trip.
    """

    d_model: int = 4096
    n_heads: int = 32
    n_kv_heads: int | None = 32
    n_layers: int = 32
    mlp_hidden_size: int | None = 12288
    mlp_ratio: int = 4
    vocab_size: int = 126464
    embedding_size: int | None = 126464
    max_sequence_length: int = 4096
    rope: bool = True
    rope_theta: float = 500000.0
    rope_full_precision: bool = True
    rms_norm_eps: float = 1e-5
    activation_type: str = "silu"
    block_type: str = "llama"
    layer_norm_type: str = "rms"
    layer_norm_with_affine: bool = True
    bias_for_layer_norm: bool | None = False
    include_bias: bool = False
    include_qkv_bias: bool = False
    weight_tying: bool = False
    alibi: bool = False
    attention_layer_norm: bool = False
    input_emb_norm: bool = False
    scale_logits: bool = False
    multi_query_attention: bool | None = None
    mask_token_id: int = 126336
    eos_token_id: int = 126081
    pad_token_id: int = 126081
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, allowed in _REQUIRED_VALUES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(
                    f"LLaDAConfig: {name}={value!r} is not supported; forecache.dllm implements LLaDA's "
                    f"LLaMA-style block with {name}={allowed[0]!r}. Set {name}={allowed[0]!r} or use LLaDA's own code."
                )
        for name in ("d_model", "n_heads", "n_layers", "vocab_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"LLaDAConfig: {name} must be positive, got {getattr(self, name)}.")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"LLaDAConfig: d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                "choose n_heads dividing d_model."
            )
        if self.head_dim % 2:
            raise ValueError(f"LLaDAConfig: head_dim={self.head_dim} must be even for RoPE; change d_model or n_heads.")
        if self.multi_query_attention is not None and self.n_kv_heads is not None:
            expected = 1 if self.multi_query_attention else self.n_heads
            if self.n_kv_heads != expected:
                raise ValueError(
                    f"LLaDAConfig: multi_query_attention={self.multi_query_attention} contradicts "
                    f"n_kv_heads={self.n_kv_heads}; set one of them to None."
                )
        kv = self.effective_n_kv_heads
        if kv <= 0 or self.n_heads % kv:
            raise ValueError(
                f"LLaDAConfig: n_heads={self.n_heads} is not a multiple of n_kv_heads={kv}; "
                "grouped-query attention needs n_kv_heads dividing n_heads."
            )
        if self.ffn_hidden_size <= 0:
            raise ValueError(f"LLaDAConfig: the MLP width must be positive, got {self.ffn_hidden_size}.")
        if self.embedding_size is not None and self.embedding_size < self.vocab_size:
            raise ValueError(
                f"LLaDAConfig: embedding_size={self.embedding_size} < vocab_size={self.vocab_size}; "
                "set embedding_size >= vocab_size (or None)."
            )
        if not 0 <= self.mask_token_id < self.vocab_size:
            raise ValueError(
                f"LLaDAConfig: mask_token_id={self.mask_token_id} is outside the vocabulary [0, {self.vocab_size}); "
                "set mask_token_id to the tokenizer's mask token (126336 for LLaDA-8B) or enlarge vocab_size."
            )
        if self.rms_norm_eps <= 0 or self.rope_theta <= 0:
            raise ValueError("LLaDAConfig: rms_norm_eps and rope_theta must be positive.")

    # Derived sizes, named as LLaDA's code names them where it has a name.
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def effective_n_kv_heads(self) -> int:
        if self.n_kv_heads is not None:
            return self.n_kv_heads
        return 1 if self.multi_query_attention else self.n_heads

    @property
    def ffn_hidden_size(self) -> int:
        return self.mlp_hidden_size if self.mlp_hidden_size is not None else self.mlp_ratio * self.d_model

    @property
    def num_embeddings(self) -> int:
        """Rows of the token embedding and width of the logits (``embedding_size`` or ``vocab_size``)."""
        return self.embedding_size if self.embedding_size is not None else self.vocab_size

    @property
    def qkv_bias(self) -> bool:
        return bool(self.include_bias or self.include_qkv_bias)

    @property
    def norm_bias(self) -> bool:
        return bool(self.include_bias if self.bias_for_layer_norm is None else self.bias_for_layer_norm)

    # Serialisation.
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LLaDAConfig:
        missing = [k for k in _REQUIRED_KEYS if k not in d]
        if missing:
            raise ValueError(
                f"LLaDAConfig: the config lacks {missing}; it is not a LLaDA config.json "
                "(expected LLaDA's flat fields d_model, n_heads, n_layers, vocab_size, ...)."
            )
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        out.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"})
        return out

    @classmethod
    def from_json(cls, path: str | Path) -> LLaDAConfig:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ValueError(f"LLaDAConfig: no config file at {path}; point at a LLaDA folder or its config.json.")
        return cls.from_dict(json.loads(path.read_text()))

    def to_json(self, path: str | Path) -> None:
        # Sorted keys and 2-space indent, as Hugging Face writes config.json.
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
