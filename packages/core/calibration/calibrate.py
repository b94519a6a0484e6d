"""calibrate(): record, fit and search in one call, and return the profile to save."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..adapters.base import Adapter
from .fit_magcache import fit_magcache
from .fit_teacache import TEACACHE_DEGREE, fit_teacache
from .knobs import knob_for
from .profile import Profile
from .recording import Generate, as_generations, record
from .search import Fidelity, SearchConfig, search_knob

#: methods whose profile holds a fit from a recording, not only a searched knob
FITTED_METHODS = ("teacache", "magcache")


def calibrate(
    target: Any,
    generate: Generate | Sequence[Generate],
    method: str,
    *,
    target_ratio: float | None = None,
    target_fidelity: float | None = None,
    fidelity: Fidelity | None = None,
    adapter: Adapter | None = None,
    schedule: Sequence[float] | torch.Tensor | None = None,
    options: dict[str, Any] | None = None,
    degree: int = TEACACHE_DEGREE,
    fit_target: str = "output",
    profile: Profile | str | os.PathLike | None = None,
    search: SearchConfig | None = None,
    progress: bool = True,
) -> Profile:
    """Calibrate preset ``method`` on ``target`` and return its :class:`~.profile.Profile`.

    ``target``: what you pass to :func:`forecache.core.apply` (a denoiser or a pipeline);
    ``generate``: a callable running one generation on fixed inputs, or a few of them (prompts,
    seeds). Each is run under handles this function applies and removes.

    - ``teacache``: one uncached run per generation is recorded and TeaCache's polynomial fitted
      (arXiv 2411.19108; ``degree`` 4, output change against modulated-input change;
      ``fit_target="residual"`` fits the residual change instead).
    - ``magcache``: the same recording gives MagCache's magnitude ratios on its time grid
      (arXiv 2506.09045).
    - with ``target_ratio`` (compute ratio, e.g. 0.5) or ``target_fidelity`` (with
      ``fidelity(output, reference) -> float``, higher is better, e.g. :func:`~.fidelity.psnr`),
      the preset's strength knob is searched too (any preset with one; see :mod:`.knobs`), using
      the fit just made. ``options``: the preset's other arguments during the search (stored in
      the profile). ``search``: its budget.

    ``profile``: an earlier profile of this method whose fit is reused; only the knob is searched
    again (e.g. at another step count). ``schedule``: the timesteps, for samplers without a
    diffusers scheduler.
    """
    gens = as_generations(generate)
    if method not in FITTED_METHODS:
        knob_for(method)  # raises the precise error (unknown preset, or no knob)
    searching = target_ratio is not None or target_fidelity is not None
    if not searching and (method not in FITTED_METHODS or profile is not None):
        raise ValueError(
            f"nothing to calibrate for {method}: give target_ratio=... (e.g. 0.5) or target_fidelity=... "
            "with fidelity=... to search its strength knob"
        )
    references = None
    data: dict[str, Any] = {}
    time_grid: tuple[float, ...] = ()
    fitted_on: dict[str, Any] = {}
    model_class = _denoiser_class(target)
    if profile is not None:
        base = Profile.coerce(profile)
        base.check_method(method)
        data = {k: v for k, v in base.data.items() if k != "search"}
        time_grid, fitted_on, model_class = base.time_grid, dict(base.fitted_on), base.model_class
    elif method in FITTED_METHODS:
        recording = record(target, gens, adapter, schedule, progress)
        references = recording.outputs
        if method == "teacache":
            data = {**fit_teacache(recording, degree, fit_target).as_data(), "fit_target": fit_target,
                    "input_changes": recording.input_changes(),
                    "two_step_changes": recording.two_step_changes()}
        else:
            data = {"ratios": list(fit_magcache(recording).ratios)}
        time_grid, model_class = recording.time_grid, recording.model_class
        fitted_on = {"steps": recording.steps, "generations": recording.generations}
    if searching:
        opts = dict(options or {})
        if data:
            opts["profile"] = Profile(model_class, method, time_grid, dict(data), fitted_on)
        result = search_knob(
            target, gens, method, compute_ratio=target_ratio, fidelity_target=target_fidelity,
            fidelity=fidelity, adapter=adapter, schedule=schedule, options=opts,
            references=references, config=search, progress=progress,
        )
        data["search"] = result.as_data()
        if not any(k in data for k in ("coefficients", "ratios")):  # a knob-only profile: the search's grid
            time_grid = result.time_grid
            fitted_on = {"steps": result.steps, "generations": result.generations}
    return Profile(model_class, method, time_grid, data, fitted_on)


def _denoiser_class(target: Any) -> str:
    """The class name :func:`forecache.core.apply` will check a profile against."""
    if isinstance(target, nn.Module):
        return type(target).__name__
    denoiser = getattr(target, "transformer", None) or getattr(target, "unet", None)
    return type(denoiser if isinstance(denoiser, nn.Module) else target).__name__
