"""What several triggers share: change measures on tensors, snapshots, the schedule."""

from __future__ import annotations

import torch

from .base import Observation

#: How a user gives a trigger the schedule it needs (last step, cool-down, retention, progress).
SCHEDULE_FIX = "apply to the pipeline or call handle.set_schedule(timesteps)"

_TINY = 1e-12


def _f32(x: torch.Tensor) -> torch.Tensor:
    # bf16/fp16 means over large feature maps lose the digits these ratios compare
    return x.detach().to(torch.float32)


def mean_abs(x: torch.Tensor) -> float:
    return float(_f32(x).abs().mean())


def relative_l1(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``mean|x - ref| / mean|ref|``: the reference tensor in the denominator, as TeaCache and
    FBCache/DBCache measure change."""
    ref32 = _f32(ref)
    num = (_f32(x) - ref32).abs().mean()
    return float(num / ref32.abs().mean().clamp_min(_TINY))


def mean_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((_f32(a) - _f32(b)).abs().mean())


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((_f32(a) - _f32(b)).pow(2).mean())


def snapshot(x: torch.Tensor | None) -> torch.Tensor | None:
    """A private copy: sites may update their tensors in place after ``observe`` (a cached step
    adds the residual into the hidden states), which would corrupt a kept reference."""
    return None if x is None else x.detach().clone()


def num_steps(obs: Observation, who: str, knob: str) -> int:
    if obs.timesteps is None:
        raise ValueError(
            f"{who}.{knob} needs the generation's schedule (number of steps), which is unknown; "
            f"{SCHEDULE_FIX}"
        )
    return len(obs.timesteps)


def is_last_step(obs: Observation) -> bool:
    """True on the schedule's last step; False when the schedule is unknown."""
    return obs.timesteps is not None and obs.step >= len(obs.timesteps) - 1
