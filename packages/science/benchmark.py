"""The molecule-generation benchmark (`forecache bench science`), on the reference model ``models/molecule-flow``.

One benchmark, ``molecules``: unconditional generation of molecules whose atom counts are drawn from the
model's training-set histogram (``sizes.json``, :func:`~forecache.science.sizes.draw_sizes`, seed
``SIZE_SEED``), 100 Euler steps on the linear grid with self-conditioning (the uncached baseline). Sample
counts: 500 molecules in a full run (the acceptance measures the baseline's quality on 500), 32 in a quick one.
Molecules are batched by size (sorted, ``BATCH`` per batch: on one CPU thread a larger batch is no faster per
molecule and costs padding) and every batch's initial noise is drawn once at ``prepare`` from ``NOISE_SEED``:
every row starts from exactly the same noise.

Rows (``methods``):

- ``ab_forecast`` (AB-Cache, arXiv 2504.10540, as Sommer et al., arXiv 2510.04646, apply it, but on the
  network's output dict where they forecast the last block's hidden state (see ``presets``); weights on the
  step index, the paper's): intervals 2-5 x orders 1-4 (quick: interval 3, order 2);
- ``ab_forecast`` with ``points=7`` (this project's least-squares extension, ``AdamsBashforth.points``): order 4
  fitted over the last 7 computed outputs, intervals 2-5 (quick: 3);
- ``ab_forecast`` with ``points=7`` and ``warmup=1`` at interval 3: the same NFE (34), but the schedule computes
  the last step, whose prediction is the sample (a full run only);
- ``ab_forecast`` with ``where=layers``: the same fit at interval 3 on the layer stack's residual, the embedding
  and the heads run at every step (nearer the paper's placement; its ``nfe`` is 100, since the first layer runs
  at every step, and its saving shows in FLOPs; a full run only);
- ``ab_forecast`` on a sampler grid twice as fine (``steps=199``): interval 6 with a warm-up of 1, which computes
  steps 0, 6, ..., 198 (34 NFE, the last step included), the fit (also in a quick run) and AB of order 2;
- ``ab_forecast_timed`` (weights from the real times): on this linear grid it equals ``ab_forecast``, so only
  interval 3, orders 2 and 3, as a check (a full run only);
- ``taylor_forecast`` (TaylorSeer, arXiv 2503.06923): interval 3, orders 1 and 2 (a full run only: ``Taylor(1)`` is
  ``ab_forecast_timed(order=2)``, which on this grid is ``ab_forecast(interval=3, order=2)``);
- ``fewer_steps``: the plain sampler with fewer steps at the network evaluations (NFE) of each interval's
  schedule (warm-up 2, then one step in ``k``: 2 + floor(98 / k) = 51, 34, 26, 21 for k = 2..5; quick: 34),
  the obvious alternative to caching.

All presets run at their defaults otherwise (warm-up 2, no cool-down, the chemistry guard on).

Per row the runner records FLOPs (FlopCounterMode on ``MoleculeEGNN``), wall time (interleaved with the
baseline, median) and: metrics (:func:`~forecache.science.evaluate.evaluate_molecules` without PoseBusters:
``validity``, ``atom_stability``, ``molecule_stability``, ``uniqueness``, MMFF94 ``energy_median`` and
``strain_median`` in kcal/mol, ``relax_rmsd_median`` in Å) plus ``nfe`` (network evaluations per molecule,
counted: rows that really ran the network's first layer, divided by the molecules) and fidelity against the
100-step uncached sample from the same noise (:func:`~forecache.science.fidelity.fidelity`: aligned RMSD,
atom-type, charge and bond agreement). For the ``fewer_steps`` rows that reference is the 100-step sample
from the same initial noise. The unit of work is the molecule (molecules/s, FLOPs per molecule).

Cost on one CPU thread: see the benchmark section of ``packages/science/ADAPTER.md``; a full run is long, so
``forecache bench science --repeats 1`` is the practical setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from forecache.core.bench.protocol import Method

from .adapter import cache_model
from .fidelity import fidelity
from .model import MoleculeEGNN
from .molecule import Molecule, uncollate
from .presets import ab_forecast, ab_forecast_timed, taylor_forecast
from .sampler import _initial_state, _sizes, sample

DEFAULT_PATH = "models/molecule-flow"
STEPS = 100
WARMUP = 2
#: molecules (quick, full)
SAMPLES = (32, 500)
#: molecules per sampler call
BATCH = 32
SIZE_SEED, NOISE_SEED = 11, 12
#: (interval, order) grids (quick, full)
AB_GRID = ([(3, 2)], [(k, m) for k in (2, 3, 4, 5) for m in (1, 2, 3, 4)])
#: ``ab_forecast`` options of the least-squares AB rows (quick, full). The full run adds, at interval 3, a
#: warm-up of 1 step, whose schedule of 100 steps ends on the last step (its prediction is the sample) at the
#: same NFE as a warm-up of 2, and the forecast of the layer stack (where="layers")
_FIT = {"order": 4, "points": 7}
AB_FIT_GRID = (
    [{"interval": 3, **_FIT}],
    [{"interval": k, **_FIT} for k in (2, 3, 4, 5)]
    + [{"interval": 3, **_FIT, "warmup": 1}, {"interval": 3, **_FIT, "where": "layers"}],
)
#: ``ab_forecast`` options of the rows on a sampler grid twice as fine, ``2 * steps - 1`` steps (199 for 100):
#: interval 6 with a warm-up of 1 step computes steps 0, 6, ..., 198, the last one, at the NFE of interval 3 on
#: the baseline's grid (34), and the forecasts in between integrate the path in steps half as long
AB_FINE_GRID = ([{"interval": 6, **_FIT, "warmup": 1}],
                [{"interval": 6, **_FIT, "warmup": 1}, {"interval": 6, "order": 2, "warmup": 1}])
AB_TIMED_GRID = ([], [(3, 2), (3, 3)])
TAYLOR_GRID = ([], [(3, 1), (3, 2)])
FEWER_STEPS_INTERVALS = ((3,), (2, 3, 4, 5))
METRIC_KEYS = {"validity": "validity", "atom_stability": "atom_stability",
               "molecule_stability": "molecule_stability", "uniqueness": "uniqueness",
               "mmff_energy_median": "energy_median", "strain_median": "strain_median",
               "relax_rmsd_median": "relax_rmsd_median"}


def schedule_nfe(interval: int, steps: int = STEPS, warmup: int = WARMUP) -> int:
    """Network evaluations of an interval schedule: the warm-up steps, then one step in ``interval``."""
    return min(steps, warmup) + max(0, steps - 1 - (warmup - 1)) // interval if warmup else 1 + (steps - 1) // interval


@dataclass
class Samples:
    """What ``generate()`` returns: the molecules (batch order) and the network evaluations per molecule."""

    molecules: list[Molecule]
    nfe: float
    calls: int
    states: list[dict[str, torch.Tensor]] = field(default_factory=list, repr=False)


class Sampling:
    """The benchmark's target: the step count and cache handle the next ``generate()`` samples with."""

    def __init__(self, model: torch.nn.Module, steps: int = STEPS) -> None:
        self.model, self.default_steps = model, steps
        self.steps, self.handle = steps, None

    def use(self, steps: int | None = None, handle: Any = None) -> Enabled:
        if self.handle is not None or self.steps != self.default_steps:
            raise ValueError("a method is already enabled on this benchmark; call the undo its enable returned")
        self.steps = steps or self.default_steps
        self.handle = handle
        return Enabled(self)


class Enabled:
    """Undo of a method (idempotent); ``stats()`` is the handle's, or the step count."""

    def __init__(self, sampling: Sampling) -> None:
        self.sampling, self.handle, self.steps, self.undone = sampling, sampling.handle, sampling.steps, False

    def __call__(self) -> None:
        if not self.undone:
            if self.handle is not None:
                self.handle.remove()
            self.sampling.steps, self.sampling.handle = self.sampling.default_steps, None
            self.undone = True

    def stats(self) -> dict:
        return self.handle.stats().as_dict() if self.handle is not None else {"steps": self.steps}


def policy_row(name: str, make, steps: int | None = None, **params) -> Method:
    """A forecache preset as a row: cached with the molecule adapter, driven by the sampler (with ``steps``
    sampler steps instead of the baseline's, if given; the label then shows them)."""

    def enable(target: Sampling, count_flops: bool = True) -> Enabled:
        return target.use(steps=steps, handle=cache_model(target.model, make(**params), count_flops=count_flops))

    return Method(name=name, params={**params, "steps": steps} if steps else params, enable=enable)


def fewer_steps_row(steps: int, note: str = "") -> Method:
    def enable(target: Sampling, count_flops: bool = True) -> Enabled:
        return target.use(steps=steps)

    return Method(name="fewer_steps", params={"steps": steps}, enable=enable, note=note)


def load_reference(path: str | Path = DEFAULT_PATH) -> tuple[MoleculeEGNN, dict[int, int]]:
    """The reference model at ``path`` and its atom-count histogram, or a FileNotFoundError naming the fix."""
    from .sizes import load_sizes

    folder = Path(path)
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"no molecule flow model at {folder} (model.safetensors missing); train the reference model first: "
            f"python -m forecache.science.train --out {folder} --minutes 60"
        )
    return MoleculeEGNN.load(folder), load_sizes(folder)


class MoleculeBenchmark:
    """Unconditional molecule generation (see the module docstring). ``model`` and ``sizes`` (a histogram)
    may be given directly (tests, random models); else they load from ``path`` at ``prepare``."""

    domain = "science"
    unit = "molecule"

    def __init__(self, path: str | Path = DEFAULT_PATH, *, model: MoleculeEGNN | None = None,
                 sizes: dict[int, int] | None = None, samples: tuple[int, int] = SAMPLES, steps: int = STEPS,
                 batch: int = BATCH, energies: bool = True, name: str = "molecules") -> None:
        self.name, self.path, self.samples, self.steps, self.batch = name, Path(path), samples, steps, batch
        self.model = str(path) if model is None else f"{type(model).__name__} (given)"
        self.net, self.histogram, self.energies = model, sizes, energies
        self.inputs: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []
        self.sampling: Sampling | None = None

    def prepare(self, quick: bool) -> None:
        from .sizes import atom_mask, draw_sizes

        if self.net is None:
            self.net, histogram = load_reference(self.path)
            self.histogram = self.histogram or histogram
        if self.histogram is None:
            raise ValueError("MoleculeBenchmark(model=...) needs sizes=: the atom-count histogram to draw from")
        self.net.eval()
        n = self.samples[0 if quick else 1]
        sizes = sorted(draw_sizes(self.histogram, n, torch.Generator().manual_seed(SIZE_SEED)))
        generator = torch.Generator().manual_seed(NOISE_SEED)
        feature = _sizes(self.net, None, None, None)
        self.inputs = []
        for lo in range(0, n, self.batch):
            mask = atom_mask(sizes[lo:lo + self.batch])
            self.inputs.append((mask, _initial_state(mask, feature, None, generator)))
        self.sampling = Sampling(self.net, self.steps)

    def target(self) -> Sampling:
        return self.sampling

    def denoiser(self) -> torch.nn.Module:
        return self.net

    def generate(self) -> Samples:
        """Every batch sampled from its fixed noise with the target's steps and handle."""
        counter = _RowCounter(self.net)
        molecules, calls, states = [], 0, []
        try:
            for mask, noise in self.inputs:
                out = sample(self.net, mask, steps=self.sampling.steps, noise=noise, handle=self.sampling.handle)
                molecules += uncollate(out.batch)
                calls += out.calls
                states.append(out.state)
        finally:
            counter.remove()
        return Samples(molecules, counter.rows / max(1, len(molecules)), calls, states)

    def units(self, out: Samples) -> int:
        return len(out.molecules)

    def fidelity(self, out: Samples, ref: Samples) -> dict[str, float]:
        f = fidelity(out.molecules, ref.molecules)
        keys = ("coord_rmsd_mean", "coord_rmsd_median", "coord_rmsd_max", "atom_type_agreement",
                "charge_agreement", "bond_agreement", "n_nonfinite")
        return {k: f[k] for k in keys}

    def metrics(self, out: Samples) -> dict[str, float]:
        from .evaluate import evaluate_molecules

        result = evaluate_molecules(out.molecules, energies=self.energies, posebusters=False)
        metrics = {short: result.get(key) for key, short in METRIC_KEYS.items() if key in result}
        metrics["nfe"] = out.nfe
        metrics["n"] = result["n"]
        return metrics

    def methods(self, quick: bool) -> list[Method]:
        q = 0 if quick else 1
        rows = [policy_row("ab_forecast", ab_forecast, interval=k, order=m) for k, m in AB_GRID[q]]
        rows += [policy_row("ab_forecast", ab_forecast, **options) for options in AB_FIT_GRID[q]]
        rows += [policy_row("ab_forecast", ab_forecast, steps=2 * self.steps - 1, **options)
                 for options in AB_FINE_GRID[q]]
        rows += [policy_row("ab_forecast_timed", ab_forecast_timed, interval=k, order=m) for k, m in AB_TIMED_GRID[q]]
        rows += [policy_row("taylor_forecast", taylor_forecast, interval=k, order=m) for k, m in TAYLOR_GRID[q]]
        rows += [fewer_steps_row(schedule_nfe(k, self.steps), note=f"the NFE of interval {k}'s schedule")
                 for k in FEWER_STEPS_INTERVALS[q]]
        return rows


class _RowCounter:
    """Molecule-evaluations that really ran the network: rows through its first layer (``embed``), which a
    forecast row never reaches. Models without ``embed`` are counted at the model call (forecasts included)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.rows = 0
        where = getattr(model, "embed", None)
        where = where if isinstance(where, torch.nn.Module) else model
        self._hook = where.register_forward_hook(self._count)

    def _count(self, module, args, output) -> None:
        x = args[0] if args else output
        self.rows += int(x.shape[0]) if torch.is_tensor(x) and x.dim() > 0 else 1

    def remove(self) -> None:
        self._hook.remove()


def benchmarks(path: str | Path = DEFAULT_PATH) -> list[MoleculeBenchmark]:
    """Entry point of the `forecache.benchmarks` group for the science domain (the model loads at ``prepare``)."""
    return [MoleculeBenchmark(path)]
