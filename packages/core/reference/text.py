"""A fixed, deterministic text encoder for Shapes prompts: no training, no download.

Why: FluxTransformer2DModel needs ``encoder_hidden_states`` (B, T, D) and ``pooled_projections``
(B, D'); the real Flux gets them from T5 and CLIP, which cannot be fetched here. Shapes prompts use
a vocabulary of 15 words, so a table lookup carries all the information the model needs.

How: a prompt is lower-cased and split on whitespace. Each known word maps to a fixed vector drawn
from a ``torch.Generator`` seeded with ``seed`` (standard normal entries), one table for the token
states (dim ``dim``) and one for the pooled vector (dim ``pooled_dim``). Token states are padded
with zero vectors to ``max_length``; the pooled vector is the mean of the words' pooled vectors.
The empty prompt ``""`` is the null condition used for classifier-free guidance: all-zero states
and pooled vector. A word outside the vocabulary raises ValueError.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from .shapes import COLOURS, POSITIONS, SHAPES

VOCABULARY: tuple[str, ...] = ("a", "at", "the") + SHAPES + COLOURS + POSITIONS


@dataclass(frozen=True)
class TextEncoderConfig:
    """Sizes and seed of :class:`ShapesTextEncoder` (stored in the model's config.json)."""

    dim: int = 64
    pooled_dim: int = 64
    max_length: int = 8
    seed: int = 0


class ShapesTextEncoder:
    """Prompt → (encoder_hidden_states (B, max_length, dim), pooled_projections (B, pooled_dim)).

    Deterministic: the same config gives the same tables on any machine (CPU generator).
    """

    def __init__(self, config: TextEncoderConfig | None = None) -> None:
        self.config = config or TextEncoderConfig()
        if self.config.max_length < 6:
            raise ValueError(f"max_length={self.config.max_length} is below 6, the length of a Shapes prompt; use >= 6")
        generator = torch.Generator().manual_seed(self.config.seed)
        self.token_table = torch.randn(len(VOCABULARY), self.config.dim, generator=generator)
        self.pooled_table = torch.randn(len(VOCABULARY), self.config.pooled_dim, generator=generator)
        self.index = {word: i for i, word in enumerate(VOCABULARY)}

    def tokenize(self, prompt: str) -> list[int]:
        """Word indices of ``prompt`` into :data:`VOCABULARY`."""
        words = prompt.lower().split()
        unknown = [w for w in words if w not in self.index]
        if unknown:
            raise ValueError(
                f"unknown word(s) {unknown} in prompt {prompt!r}; the Shapes encoder knows only {list(VOCABULARY)} "
                "(write prompts as 'a <colour> <shape> at the <position>')"
            )
        if len(words) > self.config.max_length:
            raise ValueError(
                f"prompt {prompt!r} has {len(words)} words, over max_length={self.config.max_length}; shorten it"
            )
        return [self.index[w] for w in words]

    def __call__(
        self, prompts: str | Sequence[str], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode one prompt or a list; returns (encoder_hidden_states, pooled_projections)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("no prompts given; pass a string or a non-empty list of strings")
        cfg = self.config
        states = torch.zeros(len(prompts), cfg.max_length, cfg.dim)
        pooled = torch.zeros(len(prompts), cfg.pooled_dim)
        for row, prompt in enumerate(prompts):
            ids = self.tokenize(prompt)
            if ids:
                states[row, : len(ids)] = self.token_table[ids]
                pooled[row] = self.pooled_table[ids].mean(dim=0)
        return states.to(device, dtype), pooled.to(device, dtype)

    def fingerprint(self) -> float:
        """A checksum of the tables, stored with trained weights to catch a changed encoder."""
        return round(float(self.token_table.abs().sum() + self.pooled_table.abs().sum()), 3)

    def to_dict(self) -> dict:
        return {**asdict(self.config), "fingerprint": self.fingerprint()}

    @classmethod
    def from_dict(cls, data: dict) -> ShapesTextEncoder:
        """Rebuild from :meth:`to_dict`; raises if the rebuilt tables differ from the stored ones."""
        fields = {k: data[k] for k in ("dim", "pooled_dim", "max_length", "seed") if k in data}
        encoder = cls(TextEncoderConfig(**fields))
        stored = data.get("fingerprint")
        if stored is not None and abs(encoder.fingerprint() - stored) > 1e-2:
            raise ValueError(
                f"text encoder fingerprint {encoder.fingerprint()} differs from the trained model's {stored}: "
                "this torch draws different tables from the same seed; retrain, or store the tables"
            )
        return encoder
