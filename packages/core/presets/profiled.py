"""``profile=`` for presets: arguments from a calibration profile, and the model-class check."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

from ..policy import Policy


def accepts_profile(preset: Callable[..., Policy]) -> Callable[..., Policy]:
    """Give ``preset`` a keyword ``profile=`` (a :class:`~forecache.core.calibration.Profile` or
    the path of its JSON file).

    The profile must be for this preset (its ``method``). It supplies the arguments it holds (a
    fitted TeaCache polynomial and its time grid, MagCache's ratios, a searched threshold, gamma or
    interval, the options the search ran with); arguments passed explicitly win. The policy is
    marked ``calibrated_for`` the profile's model class, so applying it to another class raises
    ValueError naming both.
    """
    signature = inspect.signature(preset)

    @functools.wraps(preset)
    def with_profile(*args, profile=None, **kwargs) -> Policy:
        if profile is None:
            return preset(*args, **kwargs)
        from ..calibration.profile import Profile  # calibration builds on presets, not the reverse

        prof = Profile.coerce(profile)
        prof.check_method(preset.__name__)
        given = set(kwargs) | set(signature.bind_partial(*args).arguments)
        fill = {k: v for k, v in prof.preset_kwargs().items() if k not in given}
        return preset(*args, **kwargs, **fill).replace(calibrated_for=prof.model_class)

    params = list(signature.parameters.values())
    at = next((i for i, p in enumerate(params) if p.kind is p.VAR_KEYWORD), len(params))
    params.insert(at, inspect.Parameter("profile", inspect.Parameter.KEYWORD_ONLY, default=None))
    with_profile.__signature__ = signature.replace(parameters=params)
    return with_profile
