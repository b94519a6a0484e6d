"""One registry of presets, for every domain.

A preset is a function named after its paper that returns a policy with the paper's defaults.
It registers itself with the :func:`preset` decorator::

    @preset(domain="science", knob="interval")
    def ab_forecast(interval: int = 3, ...) -> Policy:
        \"\"\"AB-Cache (arXiv 2504.10540) on a molecule model's output. ...\"\"\"

and its module is named under the ``forecache.presets`` entry-point group (in ``pyproject.toml``:
``science = "forecache.science.presets"``), so :func:`presets` finds it: the command line
(``forecache presets``), calibration (``knob_for``, ``search_knob``) and whatever else looks a
preset up by name see every installed domain's presets while core names none of them.
"""

from __future__ import annotations

import inspect
import re
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, overload

from ..policy import Policy

#: the entry-point group whose modules register presets when imported
ENTRY_POINT_GROUP = "forecache.presets"

#: knobs a calibration search knows how to move: each grows with caching and has a never-skip value
#: (0 for thresholds and gamma, 1 for intervals); see :mod:`forecache.core.calibration.knobs`
KNOBS = ("threshold", "interval", "gamma")


@dataclass(frozen=True)
class PresetInfo:
    """What the registry knows of one preset.

    ``name``: the function's name (what ``forecache presets`` lists and calibration looks up);
    ``domain``: ``"core"`` or the domain that defines it; ``summary``: the first sentence of its
    docstring (the paper); ``knob``: its strength knob (one of :data:`KNOBS`), or None when it has
    no single one; ``returns``: the class of what it builds, a core :class:`Policy` or a domain's
    own policy object; ``function``: the preset itself.
    """

    name: str
    domain: str
    summary: str
    knob: str | None
    returns: type
    function: Callable[..., Any]

    @property
    def core_policy(self) -> bool:
        """Whether the preset builds a core :class:`Policy` (runs through ``forecache.core.apply``)."""
        return issubclass(self.returns, Policy)


_REGISTRY: dict[str, PresetInfo] = {}
_discovered = False


@overload
def preset(function: Callable[..., Any], /) -> Callable[..., Any]: ...


@overload
def preset(
    *, domain: str | None = None, knob: str | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]: ...


def preset(
    function: Callable[..., Any] | None = None, /, *, domain: str | None = None, knob: str | None = None
) -> Any:
    """Register a preset; use as ``@preset`` or ``@preset(domain="core", knob="threshold")``.

    ``domain`` defaults to the package the function lives in (``forecache.science.presets`` ->
    ``"science"``; outside forecache, the top-level package). ``knob`` names the argument a
    calibration search moves (one of :data:`KNOBS`; it needs a default). The function is returned
    unchanged. It must have a docstring (its first sentence is the summary) and a return
    annotation (the policy class it builds). A name already registered by another function raises
    ValueError: lookups are by name across every domain.
    """

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        info = _describe(fn, domain or _domain_of(fn), knob)
        known = _REGISTRY.get(info.name)
        if known is not None and _origin(known.function) != _origin(fn):  # a re-import replaces itself
            raise ValueError(
                f"preset {info.name!r} of domain {info.domain!r} is already registered by "
                f"{_origin(known.function)} (domain {known.domain!r}); rename one of them"
            )
        _REGISTRY[info.name] = info
        return fn

    return register if function is None else register(function)


def preset_infos(domain: str | None = None, *, discover: bool = True) -> dict[str, PresetInfo]:
    """Registered presets by name, of every domain or of ``domain`` only, in registration order.

    ``discover`` (default) first imports the modules named under the ``forecache.presets``
    entry-point group, once per process; ``discover=False`` reads only what is registered already
    (for code that runs while those modules are being imported). An unknown ``domain`` raises
    ValueError naming the registered ones.
    """
    if discover:
        _discover()
    if domain is not None and all(info.domain != domain for info in _REGISTRY.values()):
        raise ValueError(
            f"no presets registered for domain {domain!r}; registered domains: {domains(discover=False)} "
            f"(a domain registers presets with @preset in a module named under the {ENTRY_POINT_GROUP!r} "
            "entry-point group)"
        )
    return {name: info for name, info in _REGISTRY.items() if domain is None or info.domain == domain}


def presets(domain: str | None = None, *, discover: bool = True) -> dict[str, Callable[..., Any]]:
    """Registered preset functions by name (see :func:`preset_infos` for the arguments)."""
    return {name: info.function for name, info in preset_infos(domain, discover=discover).items()}


def preset_info(name: str) -> PresetInfo:
    """The registry entry of preset ``name``; ValueError naming the known presets otherwise."""
    found = preset_infos()
    if name not in found:
        raise ValueError(
            f"unknown preset {name!r}; choose one of {sorted(found)} (a preset of another package "
            f"registers with @forecache.core.presets.registry.preset and the {ENTRY_POINT_GROUP!r} entry points)"
        )
    return found[name]


def lookup(name: str) -> Callable[..., Any]:
    """The preset function called ``name``, of any domain; ValueError naming the known presets otherwise."""
    return preset_info(name).function


def build(name: str, domain: str | None = None, **knobs: Any) -> Any:
    """Preset ``name`` built with ``knobs`` (its arguments by name), for callers that pick a method from a
    string (an lm-eval ``model_args`` line, a config file). ``domain``: the preset must belong to it. An
    unknown name or knob is a ValueError naming the known ones."""
    info = preset_info(name)
    if domain is not None and info.domain != domain:
        known = sorted(preset_infos(domain))
        raise ValueError(f"preset {name!r} is a {info.domain} preset, not a {domain} one; choose one of {known}")
    parameters = inspect.signature(info.function).parameters
    named = sorted(n for n, p in parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD)
    unknown = sorted(set(knobs) - set(named))
    if unknown and all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        raise UnknownKnobError(name, unknown, named)
    try:
        return info.function(**knobs)
    except TypeError as error:  # **options handed on to a class that does not take one of them
        bad = re.findall(r"unexpected keyword argument '(\w+)'", str(error))
        if not bad:
            raise
        raise UnknownKnobError(name, bad, named) from error


class UnknownKnobError(ValueError):
    """:func:`build` got knobs preset ``name`` does not take (``knobs``); ``named``: the ones it names."""

    def __init__(self, name: str, knobs: list[str], named: list[str]) -> None:
        super().__init__(f"unknown knobs {knobs} for preset {name!r}; its knobs are {named or 'none'} (plus the "
                         "options it hands on, if any); check the spelling")
        self.knobs = knobs


def domains(*, discover: bool = True) -> list[str]:
    """The domains with registered presets, sorted."""
    return sorted({info.domain for info in preset_infos(discover=discover).values()})


def first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph as plain text, its lines joined.

    A sentence ends at a full stop followed by a capital letter or a code span, not one of
    ``e.g.``, ``i.e.``, ``et al.`` (so ``et al. (arXiv`` and ``2411.19108`` do not end it), or with
    the paragraph. Sphinx roles and double-backquoted literals become single-backquoted code, as
    a terminal shows it best.
    """
    paragraph = re.split(r"\n\s*\n", (doc or "").strip(), maxsplit=1)[0]
    text = " ".join(paragraph.split())
    end = re.search(r"(?<!\be\.g)(?<!\bi\.e)(?<!\bal)\.\s+(?=[A-Z`])", text)
    sentence = text[: end.start() + 1] if end else text
    sentence = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", sentence)  # Sphinx roles
    return re.sub(r"``([^`]+)``", r"`\1`", sentence)  # literals


def _discover() -> None:
    """Import every module named under the entry-point group, once. A domain that fails to import
    (a missing optional dependency) is skipped with a warning, so the others stay usable."""
    global _discovered
    if _discovered:
        return
    _discovered = True  # set first: a module imported here may itself ask for the presets
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except ImportError as error:
            warnings.warn(
                f"presets of {ep.name!r} ({ep.value}) are not available: {error}; install its extra, "
                f"e.g. pip install 'forecache[{ep.name}]'",
                stacklevel=3,
            )


def _describe(fn: Callable[..., Any], domain: str, knob: str | None) -> PresetInfo:
    name = getattr(fn, "__name__", None)
    if not name or not callable(fn):
        raise ValueError(f"@preset decorates a function named after its paper, not {fn!r}")
    summary = first_sentence(fn.__doc__)
    if not summary:
        raise ValueError(f"preset {name!r} has no docstring; start it with the paper (title and arXiv id)")
    returns = _return_type(fn)
    if knob is not None:
        _check_knob(fn, knob)
    return PresetInfo(name, domain, summary, knob, returns, fn)


def _return_type(fn: Callable[..., Any]) -> type:
    try:
        returns = typing.get_type_hints(fn).get("return")  # follows __wrapped__ to the defining module
    except Exception as error:  # an annotation that does not resolve where the function is defined
        raise ValueError(f"preset {fn.__name__!r}: its return annotation does not resolve ({error})") from error
    if not isinstance(returns, type):
        raise ValueError(
            f"preset {fn.__name__!r} needs a return annotation naming the policy class it builds "
            f"(e.g. '-> Policy'), not {returns!r}"
        )
    return returns


def _check_knob(fn: Callable[..., Any], knob: str) -> None:
    if knob not in KNOBS:
        raise ValueError(f"preset {fn.__name__!r}: knob={knob!r} is not one a search can move; use one of {KNOBS}")
    parameter = inspect.signature(fn).parameters.get(knob)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        raise ValueError(
            f"preset {fn.__name__!r}: knob={knob!r} must be an argument with a default (the search's first probe)"
        )


def _domain_of(fn: Callable[..., Any]) -> str:
    parts = getattr(fn, "__module__", "").split(".")
    return parts[1] if parts[0] == "forecache" and len(parts) > 1 else parts[0]


def _origin(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"
