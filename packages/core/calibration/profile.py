"""Calibration profiles: what a calibration learnt about one model class, as a versioned JSON file.

A profile is fitted once (``forecache calibrate``, or :func:`forecache.core.calibration.calibrate`)
and passed to a preset: ``teacache(profile="flux.json")``. It stores the time grid it was fitted on
and is applied by time coordinate, never by step index, so one fitted at 28 steps serves 20 or 50.

File format, version 1::

    {"forecache_profile": 1,
     "model_class": "FluxTransformer2DModel",       # type(model).__name__ of the denoiser
     "method": "teacache",                           # the preset it is for
     "time_grid": [1.0, 0.96, ...],                  # the times the model received, in step order
     "data": {"coefficients": [...], "degree": 4,    # TeaCache (arXiv 2411.19108) polynomial
              "input_range": [lo, hi],                # the input changes it was fitted on
              "input_changes": [[...], ...],          # per recorded trajectory, its change per step
              "two_step_changes": [[...], ...],       # ... and over two steps (0 at steps 0 and 1)
              "ratios": [...],                       # MagCache (arXiv 2506.09045) ratios, on time_grid
              "search": {"knob": "threshold", "value": 0.31, "target": {"compute_ratio": 0.5},
                         "achieved": {...}, "steps": 28, "options": {...}, "evaluations": [...]}},
     "created": "2025-01-01T00:00:00+00:00",
     "fitted_on": {"steps": 28, "generations": 2}}

``data`` holds what the method needs: ``coefficients`` (teacache), ``ratios`` (magcache), and for
any preset with a strength knob the threshold ``search`` result; a profile may hold both a fit and
a searched knob. Non-finite numbers (an identical output's PSNR) are stored as ``null``.

Step counts. TeaCache's and MagCache's thresholds bound a quantity that the reference rules sum
step by step, so the same threshold would skip more steps at 50 steps than at 28 (and TeaCache's
polynomial would be read outside the range it was fitted on). A profile therefore passes its
``time_grid`` to the trigger, which reads every step in units of the calibration grid's local step
(:class:`~forecache.core.triggers.step_scale.StepScale`), keeping the threshold's cadence; and,
where the run's schedule is known, the threshold is re-targeted to the whole number of computes
nearest the compute ratio the search aimed for (``search.target.compute_ratio``) by running the
trigger's rule ahead on the schedule with the recorded dynamics (MagCache's ratios; TeaCache's
``input_changes``, each recorded trajectory's signal change per calibration step, and
``two_step_changes``, over two steps, which tell how the change grows with the step size):
:mod:`forecache.core.triggers.retarget`. On the calibration grid both are exactly
the papers' rules. A profile searched for a fidelity target keeps the calibration grid's compute
ratio. To re-run the search itself at another step count: ``calibrate(..., profile=p)`` (CLI
``--profile p.json --steps 50``) reuses the fit and costs a few generations. The other presets'
knobs (intervals, FBCache's and DBCache's probe thresholds, EasyCache, Foresight, SpeCa) are used
as searched: intervals are counted in steps, so they keep the compute ratio.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..triggers.magnitude import MagnitudeProfile

#: The profile file format this code reads and writes.
PROFILE_VERSION = 1

_KEYS = ("forecache_profile", "model_class", "method", "time_grid", "data", "created", "fitted_on")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Profile:
    """What a calibration learnt about one model class, for one method.

    ``model_class`` is the class name of the denoiser it was fitted on; applying a policy built
    from the profile to another class raises ValueError. ``time_grid`` is the time coordinates the
    model received during calibration, in step order. ``data`` is method-specific (see the module
    docstring); ``fitted_on`` records ``steps`` and ``generations``.
    """

    model_class: str
    method: str
    time_grid: tuple[float, ...]
    data: dict[str, Any]
    fitted_on: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=_now)

    def __post_init__(self) -> None:
        self.time_grid = tuple(float(t) for t in self.time_grid)
        if not isinstance(self.model_class, str) or not self.model_class:
            raise ValueError(f"Profile.model_class={self.model_class!r} must be the model's class name")
        if not isinstance(self.method, str) or not self.method:
            raise ValueError(f"Profile.method={self.method!r} must name a preset, e.g. 'teacache'")
        if not isinstance(self.data, dict):
            raise ValueError(f"Profile.data must be a dict, got {type(self.data).__name__}")
        n = len(self.time_grid)
        rows = [("ratios", self.data["ratios"])] if "ratios" in self.data else []
        rows += [(key, row) for key in ("input_changes", "two_step_changes") for row in self.data.get(key, [])]
        for key, row in rows:
            if len(row) != n:
                raise ValueError(
                    f"Profile.data[{key!r}] has {len(row)} entries per trajectory but time_grid has {n}; "
                    f"{key} are per step of the calibration grid: re-calibrate"
                )

    # -- what presets read -------------------------------------------------------------------------
    @property
    def knob(self) -> tuple[str, float] | None:
        """``(name, value)`` of the searched strength knob, or ``None`` when none was searched."""
        search = self.data.get("search")
        return None if not search else (search["knob"], search["value"])

    def magnitude_profile(self) -> MagnitudeProfile:
        """MagCache's ratios on this profile's time grid."""
        if "ratios" not in self.data:
            raise ValueError(f"this {self.method} profile holds no MagCache ratios; calibrate with method='magcache'")
        return MagnitudeProfile(tuple(self.data["ratios"]), self.time_grid)

    def check_method(self, method: str) -> None:
        if method != self.method:
            raise ValueError(
                f"this profile was calibrated for {self.method!r}, not {method!r}: pass it to "
                f"{self.method}(profile=...), or calibrate {method} (forecache calibrate --method {method})"
            )

    def preset_kwargs(self) -> dict[str, Any]:
        """The keyword arguments the profile gives its preset (explicit arguments override them)."""
        out: dict[str, Any] = {}
        if "coefficients" in self.data:
            out["coefficients"] = tuple(float(c) for c in self.data["coefficients"])
            out["time_grid"] = self.time_grid
            if "input_range" in self.data:
                out["input_range"] = tuple(float(x) for x in self.data["input_range"])
            for key in ("input_changes", "two_step_changes"):
                if key in self.data:
                    out[key] = tuple(tuple(float(x) for x in row) for row in self.data[key])
        if "ratios" in self.data:
            out["ratios"] = self.magnitude_profile()
            out["time_grid"] = self.time_grid
        search = self.data.get("search")
        if search:
            out.update(search.get("options") or {})
            out[search["knob"]] = search["value"]
            ratio = (search.get("target") or {}).get("compute_ratio")
            if "time_grid" in out and ratio is not None:  # re-targeted at other step counts (triggers.retarget)
                out["compute_ratio"] = float(ratio)
        return out

    # -- files -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _finite({
            "forecache_profile": PROFILE_VERSION,
            "model_class": self.model_class,
            "method": self.method,
            "time_grid": list(self.time_grid),
            "data": self.data,
            "created": self.created,
            "fitted_on": self.fitted_on,
        })

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Profile:
        if not isinstance(d, dict) or "forecache_profile" not in d:
            raise ValueError("not a forecache profile (no 'forecache_profile' version key); make one with "
                             "`forecache calibrate`")
        version = d["forecache_profile"]
        if version != PROFILE_VERSION:
            raise ValueError(
                f"profile format version {version} is not supported (this forecache reads version "
                f"{PROFILE_VERSION}); re-calibrate with this version, or upgrade forecache"
            )
        missing = [k for k in _KEYS if k not in d]
        if missing:
            raise ValueError(f"profile lacks {missing}; re-calibrate with `forecache calibrate`")
        return cls(d["model_class"], d["method"], tuple(d["time_grid"]), dict(d["data"]),
                   dict(d["fitted_on"]), d["created"])

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Profile:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no profile at {path}; make one with `forecache calibrate ... --out {path}`")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); re-calibrate") from e
        return cls.from_dict(d)

    @classmethod
    def coerce(cls, profile: Profile | str | os.PathLike) -> Profile:
        """A Profile from a Profile or a path to its JSON file."""
        if isinstance(profile, Profile):
            return profile
        if isinstance(profile, (str, os.PathLike)):
            return cls.load(profile)
        raise ValueError(f"profile={profile!r} must be a Profile or the path of a profile JSON file")

    def __repr__(self) -> str:
        parts = [f"{self.method} for {self.model_class}", f"{len(self.time_grid)} steps"]
        parts += [k for k in ("coefficients", "ratios") if k in self.data]
        if self.knob is not None:
            parts.append(f"{self.knob[0]}={self.knob[1]:.4g}")
        return f"Profile({', '.join(parts)})"


def _finite(x: Any) -> Any:
    """JSON-safe copy: non-finite floats become None, tuples lists."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x
