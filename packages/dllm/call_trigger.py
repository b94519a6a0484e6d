"""Whole-call refresh decisions of the dLLM caches, made by core triggers and recorded in a core ``Trace``.

dLLM-Cache (arXiv 2506.06295) and the Fast-dLLM combination decide, once per model call, whether a *part* of the
sequence is recomputed: the prompt, the answer ("response"), the current block's span. Each part is a
:class:`CallTrigger`: one core trigger (:class:`~forecache.core.triggers.Interval`,
:class:`~forecache.core.triggers.MeasuredChange`, ...) asked through core's protocol
(:func:`forecache.core.triggers.ask` with an :class:`~forecache.core.triggers.Observation`), with the trigger's
state and its steps-since-compute count, every answer appended to the generation's trace as a
:class:`forecache.core.telemetry.Decision`.

Trace conventions for a LLaDA generation (one cache state = one generation):

- ``site``: the part (``"prompt"``, ``"response"``, ``"span"``); ``generation`` 0, ``branch`` 0 (a CFG batch is
  one model call of 2B rows);
- ``row = -1``: the decision is for the whole call, every row of the batch alike (rows still differ in what
  V-verify picks, which is not a refresh decision and is not traced);
- ``step``: the model call's index from 0, global across blocks; ``t = float(step)`` (LLaDA's model receives no
  time coordinate); ``segment``: the block being decoded;
- ``action``: ``"compute"`` (the trigger refreshed the part), ``"cached"`` (reused), or ``"warmup"`` (the part
  was computed because there was nothing to reuse: the first call, a new batch size, a new block's span);
  ``metric``: the trigger's (model calls since the last refresh for an interval, the summed drift for the drift
  trigger); ``note``: why a ``"warmup"`` or forced compute happened.

A state's telemetry about its decisions (the calls that refreshed a part, the full calls) is read back from this
trace when asked (:func:`per_call`, :func:`steps_where`), so the trace and the stats cannot disagree.
"""

from __future__ import annotations

from forecache.core.telemetry import Decision, Trace
from forecache.core.triggers import Observation, Trigger, ask

__all__ = ["CallTrigger", "per_call", "steps_where"]


class CallTrigger:
    """One part's refresh decision at every model call: a core trigger, its state, and the trace it writes to.

    ``since_compute`` counts the model calls since this trigger last computed (``None`` before its first), so an
    :class:`~forecache.core.triggers.Interval` of ``K`` computes at calls ``0, K, 2K, ...`` of a generation:
    dLLM-Cache's ``step % K == 0`` for the sampler's calls, which are numbered from 0 without gaps. A compute the
    caller forces (``must``) restarts the count, as any compute does.
    """

    def __init__(self, site: str, trigger: Trigger, trace: Trace) -> None:
        trigger.validate()
        self.site, self.trigger, self.trace = site, trigger, trace
        self.state = trigger.new_state()
        self._since: int | None = None

    def decide(self, step: int, *, must: bool = False, signal: object = None) -> tuple[bool, float | None]:
        """Ask the trigger about model call ``step`` (``must``: compute whatever it says; ``signal``: what the
        trigger measures, e.g. the last call's drift). Returns ``(compute, metric)``; record it with
        :meth:`record`."""
        since = None if self._since is None else self._since + 1
        obs = Observation(step=step, t=float(step), timesteps=None, since_compute=since, signal=signal)
        compute, metric = ask(self.trigger, self.state, obs, must)
        self.trigger.observe(self.state, obs, compute, None, None)
        self._since = 0 if compute else since
        return compute, metric

    def peek(self, step: int, signal: object) -> float | None:
        """The metric the trigger would measure at call ``step`` given ``signal``, without deciding (``measure`` is
        pure): what a caller reports about a measurement before the next call acts on it."""
        return self.trigger.measure(self.state, Observation(step, float(step), None, self._since, signal))

    def record(self, step: int, action: str, metric: float | None, segment: int, note: str | None = None) -> None:
        """Append this call's decision to the trace (``row=-1``: the whole call)."""
        self.trace.append(Decision(generation=0, step=step, branch=0, row=-1, site=self.site, t=float(step),
                                   action=action, metric=metric, note=note, segment=segment))


def per_call(trace: Trace, sites: tuple[str, ...]) -> list[tuple[Decision, ...]]:
    """The whole-call decisions of ``trace`` grouped by model call: one tuple per call, its decisions in ``sites``
    order. A state records exactly one decision per site at every call, in that order; a trace that does not
    read so (edited by hand) raises ``ValueError``."""
    n = len(sites)
    calls = [tuple(trace[i:i + n]) for i in range(0, len(trace), n)]
    for call in calls:
        if tuple(d.site for d in call) != sites:
            raise ValueError(f"trace: a model call's decisions are at sites {[d.site for d in call]}, expected "
                             f"{list(sites)} (one per site, in that order)")
    return calls


def steps_where(calls: list[tuple[Decision, ...]], part: int, action: str) -> list[int]:
    """The steps of the calls (:func:`per_call`'s tuples) whose decision number ``part`` has ``action``, in call
    order."""
    return [call[part].step for call in calls if call[part].action == action]
