"""Rank agreement: under torch.distributed every trigger metric is averaged across ranks, so all
ranks take the same decision and stay in lockstep (a rank that skips while another computes would
deadlock collective ops inside the model, or diverge)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def mean(value: float) -> float:
    if not active():
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    x = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return float(x.item()) / dist.get_world_size()
