"""What several triggers share: change measures on tensors, snapshots, the schedule."""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
    FBCache/DBCache measure change (the one-row case of :func:`relative_l1_rows`, so a row
    measures alike alone and in a batch)."""
    return relative_l1_rows(x.reshape(1, -1), ref.reshape(1, -1))[0]


def relative_l1_rows(x: torch.Tensor, ref: torch.Tensor) -> list[float]:
    """:func:`relative_l1` of each row of ``x`` (rows, n) against the same row of ``ref``, in one
    reduction and one transfer to the host."""
    ref32 = _f32(ref)
    num = (_f32(x) - ref32).abs().mean(1)
    return (num / ref32.abs().mean(1).clamp_min(_TINY)).tolist()


def measure_changes(
    states: Sequence[dict], obs: Sequence[Observation], ref: str, metric: Callable[[dict, Observation, float], float]
) -> list[float | None]:
    """``measure_rows`` of a trigger whose metric is ``metric(state, obs, change)`` of the relative
    L1 change of each row's signal against ``state[ref]``: the changes of every row that has a
    reference of its signal's shape in one batched reduction; ``None`` for the others."""
    ready = [i for i, (s, o) in enumerate(zip(states, obs))
             if s[ref] is not None and o.signal is not None and o.signal.shape == s[ref].shape]
    out: list[float | None] = [None] * len(states)
    if ready:
        x = torch.stack([obs[i].signal.reshape(-1) for i in ready])
        changes = relative_l1_rows(x, torch.stack([states[i][ref].reshape(-1) for i in ready]).to(x.device))
        for i, change in zip(ready, changes):
            out[i] = metric(states[i], obs[i], change)
    return out


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
