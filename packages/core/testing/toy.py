"""A toy dual-stream transformer (the shape of Flux, without diffusers) for tests and examples."""

from __future__ import annotations

import torch
from torch import nn

from ..adapters.base import Adapter, BlockIO


class ToyAttention(nn.Module):
    """Joint self-attention through SDPA (which FlopCounterMode counts, unlike the fused
    nn.MultiheadAttention fast path)."""

    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        b, n, d = hidden_states.shape
        q, k, v = self.qkv(hidden_states).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class ToyBlock(nn.Module):
    """Joint attention over image and text tokens, then an MLP per stream; returns
    ``(encoder_hidden_states, hidden_states)`` as Flux blocks do."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.Linear(dim, 2 * dim)
        self.attn = ToyAttention(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.ff_context = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def modulate(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift, scale = self.norm(temb).chunk(2, dim=-1)
        return nn.functional.layer_norm(hidden_states, hidden_states.shape[-1:]) * (1 + scale[:, None]) + shift[:, None]

    def forward(self, hidden_states, encoder_hidden_states, temb):
        n = encoder_hidden_states.shape[1]
        joint = torch.cat([encoder_hidden_states, self.modulate(hidden_states, temb)], dim=1)
        attn = self.attn(joint)
        encoder_hidden_states = encoder_hidden_states + attn[:, :n]
        hidden_states = hidden_states + attn[:, n:]
        hidden_states = hidden_states + self.ff(hidden_states)
        encoder_hidden_states = encoder_hidden_states + self.ff_context(encoder_hidden_states)
        return encoder_hidden_states, hidden_states


class ToyTransformer(nn.Module):
    def __init__(self, dim: int = 32, depth: int = 4, in_channels: int = 8) -> None:
        super().__init__()
        self.x_in = nn.Linear(in_channels, dim)
        self.time = nn.Sequential(nn.Linear(1, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(ToyBlock(dim) for _ in range(depth))
        self.out = nn.Linear(dim, in_channels)

    def forward(self, hidden_states, encoder_hidden_states, timestep):
        temb = self.time(timestep.reshape(-1, 1).to(hidden_states.dtype))
        h = self.x_in(hidden_states)
        for block in self.blocks:
            encoder_hidden_states, h = block(h, encoder_hidden_states, temb)
        return self.out(h)


class ToyAdapter(Adapter):
    block_attrs = ("blocks",)
    io = BlockIO(state=("hidden_states", "encoder_hidden_states"), returns=("encoder_hidden_states", "hidden_states"))

    def modulated_input(self, block, args, kwargs):
        bound = block.io.bind(block.module.forward, args, kwargs).arguments
        return block.module.modulate(bound["hidden_states"], bound["temb"])


def toy_inputs(batch: int = 1, tokens: int = 16, text: int = 4, dim: int = 32, channels: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, tokens, channels, generator=g),
        "encoder_hidden_states": torch.randn(batch, text, dim, generator=g),
    }


def sample(model: nn.Module, inputs: dict, timesteps, guidance=None) -> torch.Tensor:
    """A plain Euler flow-matching loop (x <- x + (t_next - t) v) over ``timesteps`` in [1, 0]."""
    x = inputs["hidden_states"]
    ts = [float(t) for t in timesteps] + [0.0]
    with torch.no_grad():
        for t, t_next in zip(ts[:-1], ts[1:]):
            tt = torch.full((x.shape[0],), t)
            v = model(hidden_states=x, encoder_hidden_states=inputs["encoder_hidden_states"], timestep=tt)
            if guidance is not None:
                v_u = model(hidden_states=x, encoder_hidden_states=torch.zeros_like(inputs["encoder_hidden_states"]), timestep=tt)
                v = v_u + guidance * (v - v_u)
            x = x + (t_next - t) * v
    return x
