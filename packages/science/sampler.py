"""Flow-matching sampling of molecules (coordinates, atom types, charges, bonds) with Euler or Heun.

Convention (that of SemlaFlow, Irwin et al., arXiv 2406.07266, and FlowMol, Dunn and Koes,
arXiv 2404.19739): time runs from ``t = 0`` (noise) to ``t = 1`` (data) along the straight
interpolant ``x_t = (1 - t) x0 + t x1``. The network predicts the clean data ``x1`` (the
*endpoint* parameterisation), and the velocity of the flow is

    v(x_t, t) = (x1_hat - x_t) / (1 - t).

The network is never evaluated at ``t = 1``: Euler's last step lands exactly on the prediction.

Categorical features (atom types, formal charges, bond orders) are handled *continuously*: their
noise is a standard Gaussian in one-hot space (bonds: symmetric, zero diagonal), they follow the
same interpolant and ODE as the coordinates, and their ``x1_hat`` is the predicted probabilities
(softmax of the logits). The final state is a set of probabilities; the discrete sample is its
argmax. This is the Gaussian categorical flow of FlowMol's first version and of EQGAT-diff's
continuous variant; SemlaFlow (and FlowMol's later CTMC variant) instead use a *discrete* flow
(Campbell et al., arXiv 2402.04997) whose categorical states jump stochastically between classes.
The continuous form keeps every model output on the deterministic ODE, which is what makes the
outputs smooth in ``t`` and forecastable; a discrete flow's jumps are not.

Coordinates: the drawn noise has zero centre of mass per molecule (real atoms only). Noise passed
in by the caller is used as given, not re-centred, so with a translation-equivariant model the
sample carries the noise's translation (and rotation) through: the sampler is E(3)-equivariant.

Time grids over ``steps`` steps (``steps + 1`` points from 0 to 1):

- ``linear``: ``t_i = i / steps``;
- ``log``: ``1 - t`` geometric from 1 down to ``log_eps`` over the first ``steps`` points, then 1:
  dense near ``t = 1``, where the molecule's details are refined (SemlaFlow's ``log`` schedule
  has the same shape; ``log_eps = 0.01`` by default).

Caching: pass ``handle=forecache.core.apply(model, policy, MoleculeAdapter())`` (or any handle on
the module the velocity model calls). The sampler drives its clock: ``handle.set_schedule`` with
the evaluation times, then ``handle.step(t_i, call_times)`` before each step. Heun's two calls per
step are the step's two branches, each with its own cache and its own real time (``t_i`` and
``t_{i+1}``). Forecast outputs are used exactly as computed ones, self-conditioning included.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .molecule import ATOM_TYPES, BOND_TYPES, CHARGES

SOLVERS = ("euler", "heun")
GRIDS = ("linear", "log")

#: the model output keys this sampler reads, and the state features they predict
HEADS = (("coords", "coords"), ("atom_logits", "atoms"), ("charge_logits", "charges"), ("bond_logits", "bonds"))


def time_grid(steps: int, grid: str = "linear", log_eps: float = 0.01) -> list[float]:
    """The ``steps + 1`` times from 0 to 1 (see the module docstring for ``linear`` and ``log``)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an int >= 1 (the number of ODE steps, e.g. 100)")
    if grid == "linear":
        return [i / steps for i in range(steps + 1)]
    if grid == "log":
        if not 0.0 < log_eps < 1.0:
            raise ValueError(f"log_eps={log_eps!r} must lie in (0, 1): the last 1 - t before t = 1, e.g. 0.01")
        if steps == 1:
            return [0.0, 1.0]
        ratio = math.log(log_eps) / (steps - 1)
        return [1.0 - math.exp(ratio * i) for i in range(steps)] + [1.0]
    raise ValueError(f"grid={grid!r} is unknown; use one of {GRIDS}")


@dataclass
class FlowSample:
    """What :func:`sample` returns.

    ``batch``: the dense discrete batch of ``forecache.science.molecule`` (``coords``,
    ``atom_types``, ``charges``, ``bonds`` as class indices, ``mask``); ``state``: the final
    continuous state (coordinates and class probabilities); ``times``: the grid; ``calls``: model
    evaluations made by the sampler (cached or not).
    """

    batch: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor]
    times: list[float]
    calls: int
    predictions: list[dict[str, torch.Tensor]] = field(default_factory=list)


def sample(
    velocity_model: Callable[..., dict[str, torch.Tensor]],
    mask: torch.Tensor,
    *,
    steps: int = 100,
    solver: str = "euler",
    grid: str = "linear",
    log_eps: float = 0.01,
    self_condition: bool = True,
    noise: dict[str, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    atom_types: int | None = None,
    charges: int | None = None,
    bond_types: int | None = None,
    handle: Any = None,
    keep_predictions: bool = False,
    progress: bool = False,
) -> FlowSample:
    """Integrate the flow from noise to molecules of the sizes given by ``mask`` (B, N) bool.

    ``velocity_model`` is any callable (an ``nn.Module`` such as ``MoleculeEGNN``) called with
    keywords ``coords`` (B, N, 3), ``atoms`` (B, N, A), ``mask``, ``t`` (B,), and, when enabled,
    ``charges`` (B, N, C), ``bonds`` (B, N, N, E) and ``cond`` (the previous prediction as a
    state dict of coordinates and probabilities, ``None`` at the first call). It returns a dict
    with ``coords`` and ``atom_logits``, plus ``charge_logits`` / ``bond_logits`` when those
    features are enabled.

    Feature sizes default to the model's ``config`` (``num_atom_types``, ``num_charges``,
    ``num_bond_types``) or else to the vocabularies of ``forecache.science.molecule``; 0
    disables charges or bonds. ``noise`` overrides the drawn noise (a state dict; used as given).
    ``solver``: ``euler`` (default) or ``heun`` (two calls per step, the last step Euler since the
    model is not evaluated at ``t = 1``). Defaults: 100 steps, linear grid, self-conditioning on.
    ``handle``: a forecache cache handle to drive (see the module docstring).
    ``keep_predictions`` keeps every call's prediction (state dicts) in ``FlowSample.predictions``.
    Runs under ``torch.no_grad()``. Self-conditioning uses the latest prediction: Heun's second
    call of a step is conditioned on its first.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r} is unknown; use one of {SOLVERS}")
    times = time_grid(steps, grid, log_eps)
    if not (torch.is_tensor(mask) and mask.dim() == 2 and mask.dtype == torch.bool):
        raise ValueError("mask must be a (batch, atoms) bool tensor, True for real atoms")
    sizes = _sizes(velocity_model, atom_types, charges, bond_types)
    x = _initial_state(mask, sizes, noise, generator)
    if handle is not None:
        handle.set_schedule(times[:-1])  # the evaluation times; also starts a new generation
        calls_before = handle.stats().calls
    flow = _Flow(velocity_model, mask, sizes, self_condition, keep_predictions)
    bar = _progress(steps, progress)
    with torch.no_grad():  # sampling: no autograd graph across 100 steps
        for i in range(steps):
            t, t_next = times[i], times[i + 1]
            heun = solver == "heun" and t_next < 1.0
            if handle is not None:
                handle.step(t, (t, t_next) if heun else None)
            v = flow.velocity(x, t)
            if heun:
                guess = _axpy(x, t_next - t, v, flow.masks)
                v2 = flow.velocity(guess, t_next)
                x = _axpy(x, 0.5 * (t_next - t), {k: v[k] + v2[k] for k in v}, flow.masks)
            else:
                x = _axpy(x, t_next - t, v, flow.masks)
            bar.update(1)
    bar.close()
    if handle is not None and handle.stats().calls == calls_before:
        raise RuntimeError(
            f"the cache handle ({handle!r}) saw none of the sampler's {flow.calls} model calls: it is "
            "applied to another module than the velocity model calls; apply it to that module"
        )
    return FlowSample(_discrete(x, mask), x, times, flow.calls, flow.predictions)


# -- pieces -----------------------------------------------------------------------------------------
class _Flow:
    """The velocity of the endpoint parameterisation, with self-conditioning on the last prediction."""

    def __init__(self, model, mask, sizes, self_condition, keep) -> None:
        self.model, self.mask, self.sizes = model, mask, sizes
        self.self_condition = self_condition
        self.masks = _feature_masks(mask)
        self.cond: dict[str, torch.Tensor] | None = None
        self.calls = 0
        self.keep = keep
        self.predictions: list[dict[str, torch.Tensor]] = []

    def velocity(self, x: dict[str, torch.Tensor], t: float) -> dict[str, torch.Tensor]:
        B = self.mask.shape[0]
        kwargs = {k: v for k, v in x.items()}
        kwargs["mask"] = self.mask
        kwargs["t"] = torch.full((B,), t, dtype=x["coords"].dtype, device=x["coords"].device)
        if self.self_condition:
            kwargs["cond"] = self.cond
        out = self.model(**kwargs)
        self.calls += 1
        pred = _prediction(out, x, self.masks)
        if self.self_condition:
            self.cond = pred
        if self.keep:
            self.predictions.append({k: v.detach().clone() for k, v in pred.items()})
        return {k: (pred[k] - x[k]) / (1.0 - t) for k in x}


def _sizes(model, atom_types, charges, bond_types) -> dict[str, int]:
    config = getattr(model, "config", None)

    def pick(given, attr, default):
        value = given if given is not None else getattr(config, attr, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{attr}={value!r} must be an int >= 0")
        return value

    sizes = {
        "atoms": pick(atom_types, "num_atom_types", len(ATOM_TYPES)),
        "charges": pick(charges, "num_charges", len(CHARGES)),
        "bonds": pick(bond_types, "num_bond_types", len(BOND_TYPES)),
    }
    if sizes["atoms"] < 1:
        raise ValueError("atom_types must be >= 1: every molecule has atom types")
    return sizes


def _feature_masks(mask: torch.Tensor) -> dict[str, torch.Tensor]:
    node = mask.unsqueeze(-1)
    eye = torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
    pair = (mask.unsqueeze(1) & mask.unsqueeze(2) & ~eye).unsqueeze(-1)
    return {"coords": node, "atoms": node, "charges": node, "bonds": pair}


def _shape(name: str, mask: torch.Tensor, sizes: dict[str, int]) -> tuple[int, ...]:
    B, N = mask.shape
    return {"coords": (B, N, 3), "atoms": (B, N, sizes["atoms"]), "charges": (B, N, sizes["charges"]),
            "bonds": (B, N, N, sizes["bonds"])}[name]


def _initial_state(mask, sizes, noise, generator) -> dict[str, torch.Tensor]:
    masks = _feature_masks(mask)
    names = ["coords", "atoms"] + [k for k in ("charges", "bonds") if sizes[k] > 0]
    if noise is not None:
        missing = [k for k in names if k not in noise]
        extra = [k for k in noise if k not in names]
        if missing or extra:
            raise ValueError(f"noise has keys {sorted(noise)}; expected exactly {names} (missing {missing}, extra {extra})")
        for k in names:
            if tuple(noise[k].shape) != _shape(k, mask, sizes):
                raise ValueError(f"noise[{k!r}] has shape {tuple(noise[k].shape)}; expected {_shape(k, mask, sizes)} from mask and sizes")
        return {k: noise[k] * masks[k] for k in names}
    device = mask.device
    x = {k: torch.randn(_shape(k, mask, sizes), generator=generator, device=device) * masks[k] for k in names}
    count = mask.sum(1).clamp_min(1).view(-1, 1, 1)
    x["coords"] = (x["coords"] - x["coords"].sum(1, keepdim=True) / count) * masks["coords"]
    if "bonds" in x:
        upper = torch.triu(x["bonds"].movedim(-1, 1), diagonal=1)
        x["bonds"] = (upper + upper.transpose(-1, -2)).movedim(1, -1) * masks["bonds"]
    return x


def _prediction(out: Any, x: dict[str, torch.Tensor], masks) -> dict[str, torch.Tensor]:
    """The predicted clean state: coordinates as given, categorical features as probabilities."""
    if not isinstance(out, dict):
        raise TypeError(f"the velocity model returned a {type(out).__name__}; it must return a dict with {[h for h, s in HEADS if s in x]}")
    pred = {}
    for head, name in HEADS:
        if name not in x:
            continue
        value = out.get(head)
        if value is None:
            raise ValueError(
                f"the velocity model's output has no {head!r} (it has {sorted(out)}); return it, or disable "
                f"that feature ({'charges=0' if name == 'charges' else 'bond_types=0'})"
            )
        if value.shape != x[name].shape:
            raise ValueError(f"output {head!r} has shape {tuple(value.shape)}; expected {tuple(x[name].shape)} like the state")
        pred[name] = (value if name == "coords" else value.softmax(-1)) * masks[name]
    return pred


def _axpy(x, h, v, masks) -> dict[str, torch.Tensor]:
    return {k: (x[k] + h * v[k]) * masks[k] for k in x}


def _discrete(x: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
    B, N = mask.shape
    neutral = CHARGES.index(0)
    batch = {"coords": x["coords"], "atom_types": x["atoms"].argmax(-1) * mask, "mask": mask}
    batch["charges"] = x["charges"].argmax(-1) * mask if "charges" in x else torch.full((B, N), neutral, device=mask.device) * mask
    batch["bonds"] = x["bonds"].argmax(-1) * _feature_masks(mask)["bonds"][..., 0] if "bonds" in x else torch.zeros(B, N, N, dtype=torch.long, device=mask.device)
    return batch


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(steps: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc="flow matching", unit="step")
