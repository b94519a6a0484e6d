"""Recording what calibration needs, per step, from uncached generations under the normal runtime.

No new hooks: :func:`record` applies a policy whose trigger, :class:`Recorder`, never skips and asks
for TeaCache's signal (``"modulated_input"``) on the whole block stack (``Blocks()``). The span site
hands the trigger, at every step and for every row and CFG branch, the signal, the block stack's
input and its real output, from which the recorder keeps a few numbers per step. The generation is
therefore exactly the uncached one, and its output serves as the fidelity reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..adapters.base import Adapter
from ..apply import apply
from ..forecasters.reuse import Reuse
from ..policy import Policy
from ..selectors.blocks import Blocks
from ..triggers._common import relative_l1, snapshot
from ..triggers.base import Observation, Trigger

#: A generation: runs the user's pipeline or sampler once on fixed inputs and returns its output.
Generate = Callable[[], Any]


@dataclass
class StepPoint:
    """What one row (of one CFG branch) showed at one step of an uncached generation.

    Changes are relative L1 distances against the previous step, ``mean|x_n - x_{n-1}| /
    mean|x_{n-1}|`` (``None`` at step 0):

    - ``input_change``: of TeaCache's signal, the first block's timestep-modulated input
      (arXiv 2411.19108; the raw block-stack input when the adapter knows no modulation);
    - ``output_change``: of the block stack's output, what TeaCache's polynomial predicts from
      ``input_change`` (the model output up to the final norm and projection);
    - ``residual_change``: of the block stack's residual ``r = output - input``, the feature that
      forecache's block-stack caches reuse.

    ``input_change_2`` is the signal's change over two steps (against step ``n - 2``; ``None`` at
    steps 0 and 1): set against the two one-step changes it spans, it tells how the change grows
    with the step size, which a profile needs to be read at another step count.

    ``residual_norm`` is ``||r_n||_2`` over the row, and ``magnitude_ratio`` MagCache's
    ``g_n = mean over tokens of ||r_n|| / ||r_{n-1}||`` (norms over the channel dimension; arXiv
    2506.09045, as its calibration scripts compute it; ``None`` at step 0).
    """

    step: int
    t: float
    input_change: float | None
    output_change: float | None
    residual_change: float | None
    residual_norm: float
    magnitude_ratio: float | None
    input_change_2: float | None = None


@dataclass
class Trajectory:
    """The steps of one row and branch through one generation."""

    generation: int
    points: list[StepPoint] = field(default_factory=list)

    @property
    def time_grid(self) -> tuple[float, ...]:
        return tuple(p.t for p in self.points)


class Recorder(Trigger):
    """A trigger that always computes and records a :class:`StepPoint` per row and step.

    Each per-row state it creates is a new :class:`Trajectory`, appended to ``trajectories``; the
    site creates one per row and CFG branch at the start of every generation.
    """

    signal = "modulated_input"

    def __init__(self) -> None:
        self.trajectories: list[Trajectory] = []
        self.generation = 0

    def new_state(self) -> dict:
        trajectory = Trajectory(self.generation)
        self.trajectories.append(trajectory)
        return {"trajectory": trajectory, "signal": None, "signal_2": None, "output": None, "residual": None}

    def decide(self, state: dict, obs: Observation, metric: float | None) -> bool:
        return True

    def observe(
        self,
        state: dict,
        obs: Observation,
        computed: bool,
        inputs: torch.Tensor | None,
        output: torch.Tensor | None,
    ) -> None:
        if output is None or inputs is None:
            raise RuntimeError("the calibration recorder saw a step without the block stack's output")
        residual = output.detach().float() - inputs.detach().float()
        signal = obs.signal if obs.signal is not None else inputs
        prev_sig, prev_out, prev_res = state["signal"], state["output"], state["residual"]
        first = prev_res is None
        ratio = None
        if not first:
            per_token = residual.norm(dim=-1) / prev_res.norm(dim=-1).clamp_min(1e-12)
            ratio = float(per_token.mean())
        state["trajectory"].points.append(StepPoint(
            step=obs.step,
            t=float(obs.t),
            input_change=None if first else relative_l1(signal, prev_sig),
            output_change=None if first else relative_l1(output, prev_out),
            residual_change=None if first else relative_l1(residual, prev_res),
            residual_norm=float(residual.norm()),
            magnitude_ratio=ratio,
            input_change_2=None if state["signal_2"] is None else relative_l1(signal, state["signal_2"]),
        ))
        state["signal_2"] = prev_sig
        state["signal"], state["output"], state["residual"] = snapshot(signal), snapshot(output), residual


@dataclass
class Recording:
    """Per-step records of uncached generations of one model.

    ``trajectories`` has one entry per generation, CFG branch and batch row; ``outputs`` the
    generations' return values (the uncached references for fidelity).
    """

    model_class: str
    trajectories: list[Trajectory]
    outputs: list[Any]

    @property
    def generations(self) -> int:
        return len(self.outputs)

    @property
    def time_grid(self) -> tuple[float, ...]:
        """The time coordinates of the recorded steps, shared by every trajectory."""
        if not self.trajectories:
            raise ValueError("the recording is empty: generate() never called the model")
        grid = self.trajectories[0].time_grid
        for tr in self.trajectories[1:]:
            if len(tr.time_grid) != len(grid) or not np.allclose(tr.time_grid, grid, rtol=1e-6, atol=1e-9):
                raise ValueError(
                    f"the recorded generations ran different schedules ({len(grid)} vs "
                    f"{len(tr.time_grid)} steps); calibrate with one step count and schedule"
                )
        return grid

    @property
    def steps(self) -> int:
        return len(self.time_grid)

    def pairs(self, target: str = "output") -> tuple[np.ndarray, np.ndarray]:
        """``(input_change, <target>_change)`` of every step after the first, over all trajectories:
        the data TeaCache's polynomial is fitted to. ``target``: ``"output"`` (TeaCache) or
        ``"residual"``."""
        if target not in ("output", "residual"):
            raise ValueError(f"target={target!r}: use 'output' (TeaCache's fit) or 'residual'")
        xs, ys = [], []
        for tr in self.trajectories:
            for p in tr.points[1:]:
                y = p.output_change if target == "output" else p.residual_change
                if p.input_change is not None and y is not None and math.isfinite(p.input_change) and math.isfinite(y):
                    xs.append(p.input_change)
                    ys.append(y)
        return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)

    def input_changes(self) -> list[list[float]]:
        """Per trajectory, its ``input_change`` at each step (0.0 at step 0): how TeaCache's signal
        moves along the grid, which lets a threshold be re-targeted to another step count
        (:mod:`forecache.core.triggers.retarget`)."""
        self.time_grid  # noqa: B018 - checks that the trajectories share one grid
        return [[0.0] + [float(p.input_change) for p in tr.points[1:]] for tr in self.trajectories]

    def two_step_changes(self) -> list[list[float]]:
        """Per trajectory, its ``input_change_2`` at each step (0.0 at steps 0 and 1)."""
        self.time_grid  # noqa: B018 - checks that the trajectories share one grid
        return [[0.0, 0.0] + [float(p.input_change_2) for p in tr.points[2:]] for tr in self.trajectories]

    def magnitude_ratios(self) -> np.ndarray:
        """MagCache's ratios, ``(trajectories, steps)``, with 1.0 at step 0."""
        self.time_grid  # noqa: B018 - checks that the trajectories share one grid
        return np.asarray([[1.0] + [p.magnitude_ratio for p in tr.points[1:]] for tr in self.trajectories])

    def to_dict(self) -> dict:
        """The per-step records as plain data (outputs are left out)."""
        return {
            "model_class": self.model_class,
            "trajectories": [
                {"generation": tr.generation, "points": [vars(p) for p in tr.points]} for tr in self.trajectories
            ],
        }


def as_generations(generate: Generate | Sequence[Generate]) -> list[Generate]:
    """One generation callable, or several (e.g. one per prompt), as a list."""
    gens = [generate] if callable(generate) else list(generate)
    if not gens or not all(callable(g) for g in gens):
        raise ValueError(
            "generate must be a callable that runs one generation on fixed inputs (or a list of them), "
            "e.g. lambda: pipe('a red square', num_inference_steps=28, generator=torch.Generator().manual_seed(0))"
        )
    return gens


def record(
    target: Any,
    generate: Generate | Sequence[Generate],
    adapter: Adapter | None = None,
    schedule: Sequence[float] | torch.Tensor | None = None,
    progress: bool = True,
) -> Recording:
    """Run each generation once, uncached, and record a :class:`StepPoint` per row and step.

    ``target`` is what you would pass to :func:`forecache.core.apply` (a denoiser or a pipeline);
    ``generate`` one callable (or a list: a few prompts or seeds) that runs a whole generation
    on fixed inputs. ``schedule``: the timesteps, for samplers that do not go through a diffusers
    scheduler (``handle.set_schedule``). The handle is removed afterwards, whatever happens.
    """
    gens = as_generations(generate)
    recorder = Recorder()
    policy = Policy(where=Blocks(), when=recorder, what=Reuse(), name="calibration-recorder")
    handle = apply(target, policy, adapter, count_flops=False)
    outputs = []
    try:
        if schedule is not None:
            handle.set_schedule(schedule)
        for i, gen in enumerate(tqdm(gens, desc="recording (uncached)", unit="generation", disable=not progress)):
            recorder.generation = i
            handle.reset()
            with torch.no_grad():
                outputs.append(gen())
    finally:
        handle.remove()
    recording = Recording(type(handle.model).__name__, recorder.trajectories, outputs)
    for tr in recording.trajectories:
        if [p.step for p in tr.points] != list(range(len(tr.points))):
            raise RuntimeError(
                "the recorder missed steps (the model was called more than once per step and row?); "
                "call handle.step(t) per step or check the adapter's timestep"
            )
    recording.time_grid  # noqa: B018 - raise early when generations ran different schedules
    return recording
