"""The image benchmarks (`forecache bench core`), on the reference model, measured against the uncached
images of the same seeds.

- ``shapes-28``: every preset swept over its strength knob, calibrated presets reaching target speedups
  from the target alone, and the peers, at 28 steps.
- ``shapes-20`` and ``shapes-50`` (full runs only): step-count transfer. The presets with a fitted
  profile (TeaCache, MagCache) calibrated at 28 steps and used at 20 or 50 (``*-from28``), next to the
  same presets calibrated at that step count (``*-calibrated``), for each target speedup.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import presets as P
from ..bench.metrics import psnr, ssim
from ..bench.protocol import Method, policy_method
from .detector import conditioning_accuracy
from .model import DEFAULT_PATH
from .shapes import ALL_CONDITIONS

#: preset -> the strength-knob settings (quick: one, so `make demo` stays well inside 15 minutes on
#: 2 cores; full: the sweep); other knobs at the paper defaults
SWEEPS: dict[str, tuple[list[dict], list[dict]]] = {
    "fora": ([{"interval": i} for i in (3,)], [{"interval": i} for i in (2, 3, 4, 5)]),
    "delta_dit": ([{"interval": i} for i in (3,)], [{"interval": i} for i in (2, 3, 4)]),
    "pab": ([{"spatial": i} for i in (3,)], [{"spatial": i} for i in (2, 3, 4)]),
    "toca": ([{"interval": i} for i in (4,)], [{"interval": i} for i in (3, 4, 5)]),
    "fastercache": ([{"attention_interval": i} for i in (3,)], [{"attention_interval": i} for i in (2, 3, 4)]),
    "teacache": ([{"threshold": x} for x in (0.3,)], [{"threshold": x} for x in (0.05, 0.1, 0.2, 0.4, 0.8)]),
    "magcache": ([{"threshold": x} for x in (0.24,)], [{"threshold": x} for x in (0.03, 0.06, 0.12, 0.24, 0.5)]),
    "easycache": ([{"threshold": x} for x in (0.2,)], [{"threshold": x} for x in (0.02, 0.05, 0.1, 0.2, 0.4)]),
    "fbcache": ([{"threshold": x} for x in (0.3,)], [{"threshold": x} for x in (0.05, 0.1, 0.2, 0.3, 0.5)]),
    "dbcache": ([{"threshold": x, "fn": 1, "bn": 1, "warmup": 3} for x in (0.3,)],
                [{"threshold": x, "fn": 1, "bn": 1, "warmup": 3} for x in (0.05, 0.1, 0.2, 0.3, 0.5)]),
    "foresight": ([{"gamma": g} for g in (4.0,)], [{"gamma": g} for g in (0.5, 1.0, 2.0, 4.0)]),
    "taylorseer": ([{"interval": i} for i in (5,)], [{"interval": i} for i in (3, 4, 5, 6)]),
    "hicache": ([{"interval": i} for i in (5,)], [{"interval": i} for i in (3, 4, 5, 6)]),
    "abcache": ([{"interval": i} for i in (3,)], [{"interval": i} for i in (2, 3, 4, 5)]),
    "foca": ([{"interval": i} for i in (5,)], [{"interval": i} for i in (3, 4, 5, 6)]),
    "freqca": ([{"interval": i} for i in (5,)], [{"interval": i} for i in (3, 4, 5, 6)]),
    "speca": ([{"threshold": x} for x in (0.5,)], [{"threshold": x} for x in (0.05, 0.1, 0.3, 0.5, 1.0)]),
}

#: presets calibrated to target compute ratios (2x, 3x, 4x FLOPs) from the target alone
CALIBRATED = ("teacache", "magcache", "taylorseer", "freqca", "speca")
TARGETS = (1 / 2, 1 / 3, 1 / 4)


#: presets whose profile holds a fit over time (read by time coordinate at any step count)
TRANSFERRED = ("teacache", "magcache")
#: the step count the benchmark's profiles are fitted at
FIT_STEPS = 28

#: calibrated profiles, shared by the benchmarks of one process: (path, preset, ratio, steps) -> Profile
_PROFILES: dict[tuple, Any] = {}


class ShapesBenchmark:
    """Reference image model, no guidance: 24 distinct prompts (4 quick), seed 0, at ``steps`` steps.

    At ``steps`` = 28 (``FIT_STEPS``) it is the main benchmark; at other step counts it compares
    profiles fitted at 28 steps with profiles fitted at ``steps`` (a full run only: quick runs have no
    rows for it).
    """

    domain = "core"
    model = "models/shapes-flux"

    def __init__(self, path: str = str(DEFAULT_PATH), steps: int = FIT_STEPS, calibrate: bool = True) -> None:
        self.path, self.steps, self.calibrate = path, steps, calibrate
        self.name = f"shapes-{steps}"
        self.pipe = None

    def prepare(self, quick: bool) -> None:
        from . import load_pipeline

        if self.pipe is None:
            self.pipe = load_pipeline(self.path)
        # 13 is coprime with the 60 conditions: shapes, colours and positions all vary
        picks = [(k * 13) % len(ALL_CONDITIONS) for k in range(4 if quick else 24)]
        self.conditions = [ALL_CONDITIONS[i] for i in picks]
        self.prompts = [c.description for c in self.conditions]
        # calibration sees other prompts and another seed than the evaluation it is judged on
        self.calibration_prompts = [ALL_CONDITIONS[(k * 7 + 3) % len(ALL_CONDITIONS)].description for k in range(4)]

    def calibration_generate(self, steps: int | None = None) -> torch.Tensor:
        return self.pipe(self.calibration_prompts, num_inference_steps=steps or self.steps, seed=1)

    def target(self) -> Any:
        return self.pipe

    def denoiser(self) -> torch.nn.Module:
        return self.pipe.transformer

    def generate(self) -> torch.Tensor:
        return self.pipe(self.prompts, num_inference_steps=self.steps, seed=0)

    def fidelity(self, out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
        return {"psnr": psnr(out, ref), "ssim": ssim(out, ref)}

    def metrics(self, out: torch.Tensor) -> dict[str, float]:
        return {"accuracy": conditioning_accuracy(out, self.conditions)["all"]}

    def methods(self, quick: bool) -> list[Method]:
        if self.steps != FIT_STEPS:
            if quick or not self.calibrate:
                return []
            return [self._calibrated(name, ratio, fit_steps=steps)
                    for name in TRANSFERRED for ratio in TARGETS for steps in (self.steps, FIT_STEPS)]
        rows = [
            policy_method(name, P.PRESETS[name], **params)
            for name, (fast, full) in SWEEPS.items()
            for params in (fast if quick else full)
        ]
        if self.calibrate:
            names = CALIBRATED[:2] if quick else CALIBRATED
            rows += [self._calibrated(name, ratio) for name in names for ratio in TARGETS]
        from ..bench.peers import available_peers

        return rows + available_peers(quick)

    def _calibrated(self, name: str, ratio: float, fit_steps: int | None = None) -> Method:
        """A preset whose knob calibration finds, at ``enable`` time, for a target compute ratio, on
        generations of ``fit_steps`` steps (default: this benchmark's)."""
        from ..apply import apply
        from ..calibration import calibrate

        fit_steps = fit_steps or self.steps
        label = f"{name}@{1 / ratio:.0f}x"
        key = (self.path, name, ratio, fit_steps)

        def enable(target: Any, count_flops: bool = True):
            if key not in _PROFILES:
                _PROFILES[key] = calibrate(target, lambda: self.calibration_generate(fit_steps), name,
                                           target_ratio=ratio, progress=False)
            search = _PROFILES[key].data.get("search", {})
            if not search.get("met", True):
                # reported as a skipped row: the method cannot reach this speedup on this model
                raise RuntimeError(f"calibration could not reach {label} at {fit_steps} steps: "
                                   f"{search.get('achieved')}")
            return apply(target, P.PRESETS[name](profile=_PROFILES[key]), count_flops=count_flops)

        if fit_steps == self.steps:
            return Method(f"{name}-calibrated", {"target_speedup": round(1 / ratio, 2)}, enable,
                          note=f"{label}: knob found by forecache.core.calibration from the target alone")
        return Method(f"{name}-from{fit_steps}", {"target_speedup": round(1 / ratio, 2)}, enable,
                      note=f"{label}: profile calibrated at {fit_steps} steps, used at {self.steps}")


def benchmarks() -> list[ShapesBenchmark]:
    """Entry point of the `forecache.benchmarks` group for the core (image) domain."""
    return [ShapesBenchmark(), *(ShapesBenchmark(steps=n) for n in (20, 50))]
