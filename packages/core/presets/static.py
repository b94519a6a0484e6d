"""Static presets: caching on a fixed schedule, independent of the content."""

from __future__ import annotations

from ..forecasters.blend import Blend, linear_ramp
from ..forecasters.reuse import Reuse
from ..policy import Policy
from ..selectors.blocks import Blocks
from ..selectors.cfg import CfgBranch
from ..selectors.submodules import Submodules
from ..selectors.unet import UNetBranch
from ..sites.tokens import TokenSelection
from ..triggers.interval import Interval
from .profiled import accepts_profile
from .registry import preset


@preset(domain="core", knob="interval")
@accepts_profile
def fora(interval: int = 3, warmup: int = 0, **options) -> Policy:
    """FORA: Fast-Forward Caching in Diffusion Transformer Acceleration (arXiv 2407.01425).

    Every block's attention and MLP outputs are computed every ``interval`` steps and reused in
    between. Default N=3, the paper's main setting; ``interval=1`` never skips.
    """
    return Policy(
        where=Submodules(("attn", "mlp")), when=Interval(interval, warmup), what=Reuse(),
        name="fora", paper="arXiv:2407.01425", **options,
    )


@preset(domain="core", knob="interval")
@accepts_profile
def deepcache(interval: int = 3, branch: int = 0, **options) -> Policy:
    """DeepCache: Accelerating Diffusion Models for Free (arXiv 2312.00858), for diffusers UNets.

    The deep path below skip branch ``branch`` is computed every ``interval`` steps and its output
    reused in between; the shallow branch always runs. Defaults from the reference README
    (``cache_interval=3, cache_branch_id=0``), with block-level branching (see UNetBranchSite).
    Uniform intervals only (the paper's non-uniform 1:N schedule is not implemented).
    """
    return Policy(
        where=UNetBranch(branch), when=Interval(interval), what=Reuse(),
        name="deepcache", paper="arXiv:2312.00858", **options,
    )


@preset(domain="core", knob="interval")
@accepts_profile
def delta_dit(interval: int = 3, boundary: float = 0.5, split: float = 0.5, **options) -> Policy:
    """Δ-DiT: A Training-Free Acceleration Method Tailored for Diffusion Transformers (arXiv 2406.01125).

    Δ-Cache caches a block range's residual (its output minus its input) and adds it to the
    current input, so the step's new information passes through. Early (noise level above
    ``boundary``, the outline stage) the rear blocks are cached; late (detail stage) the front
    blocks. ``split`` is the fraction of blocks in the front range. Interval N=3 as in the public
    re-implementations of Δ-DiT in the TaylorSeer/ToCa code; the paper tunes b and the number of
    cached blocks per model, and those values are not in code we could read, so ``boundary`` and
    ``split`` default to halves. ``interval=1`` never skips.
    """
    if not 0.0 < split < 1.0:
        raise ValueError(f"delta_dit(split={split}): the front range is a fraction in (0, 1)")
    return Policy(
        where=[_FrontRear(split, front=True, window=(0.0, boundary)), _FrontRear(split, front=False, window=(boundary, 1.0))],
        when=Interval(interval), what=Reuse(), name="delta_dit", paper="arXiv:2406.01125", **options,
    )


class _FrontRear(Blocks):
    """Blocks selected by a fraction of the adapter's block count (known only at apply time)."""

    def __init__(self, split: float, front: bool, window: tuple[float, float]) -> None:
        super().__init__(window=window)
        self.split, self.front = split, front

    def build(self, runtime, model, adapter, policy):
        n = len(adapter.blocks(model))
        cut = min(max(1, round(n * self.split)), n - 1)
        self.start, self.stop = (0, cut) if self.front else (cut, None)
        return super().build(runtime, model, adapter, policy)


@preset(domain="core")
def pab(
    spatial: int = 2,
    temporal: int = 4,
    cross: int = 6,
    mlp: int | None = None,
    window: tuple[float, float] = (0.1, 0.8),
    **options,
) -> Policy:
    """Pyramid Attention Broadcast (PAB, arXiv 2408.12588).

    Each attention type is broadcast (reused) over its own range: spatial 2, temporal 4,
    cross 6 (the paper's pyramid), within noise levels ``window`` (the middle 10%–80% of the
    schedule: diffusers' default timestep range (100, 800)). ``mlp`` adds an MLP broadcast range
    (off by default, as in the paper's image setting). All ranges 1 never skip.
    """
    ranges = {"attn": spatial, "temporal_attn": temporal, "cross_attn": cross}
    if mlp is not None:
        ranges["mlp"] = mlp
    return Policy(
        where=Submodules(tuple(ranges), when={role: Interval(n) for role, n in ranges.items()}, window=window),
        when=Interval(spatial), what=Reuse(), name="pab", paper="arXiv:2408.12588", **options,
    )


@preset(domain="core", knob="interval")
@accepts_profile
def toca(interval: int = 4, ratio: float = 0.07, **options) -> Policy:
    """ToCa: Token-wise Feature Caching (arXiv 2410.05317).

    Full computation every ``interval`` steps (fresh_threshold 4); in between, attention is
    reused and each MLP recomputes a scored fraction of its tokens (base ratio R0 = 0.07 scaled
    by ToCa's layer/step/module schedule). Defaults from the reference DiT command line.
    Deviation: the attention-map scores are replaced, see ``forecache.core.sites.tokens``.
    ``interval=1`` never skips.
    """
    return Policy(
        where=Submodules(("attn", "mlp"), tokens=TokenSelection(ratio=ratio, interval=interval)),
        when=Interval(interval), what=Reuse(), name="toca", paper="arXiv:2410.05317", **options,
    )


@preset(domain="core")
def fastercache(
    attention_interval: int = 2,
    attention_window: tuple[float, float] = (0.0, 0.681),
    uncond_interval: int = 5,
    uncond_window: tuple[float, float] = (0.0, 0.641),
    cfg_layout: str = "sequential",
    uncond: int = 1,
    **options,
) -> Policy:
    """FasterCache: Training-Free Video Diffusion Model Acceleration with High Quality (arXiv 2410.19355).

    Spatial attention is computed every ``attention_interval`` steps below noise level 0.681 and
    extrapolated in between with w(t) rising linearly from 0 to 1 (the paper's weighting); the
    unconditional CFG branch is computed every ``uncond_interval`` steps below 0.641 and rebuilt
    in between from the conditional output plus the cached, band-reweighted difference
    (CFG-Cache). Windows are diffusers' defaults (681 and 641 of 1000). For guidance-distilled
    models without an unconditional call, use ``fastercache(uncond_interval=1)``.
    """
    return Policy(
        where=[
            Submodules(("attn",), window=attention_window, what=Blend(linear_ramp)),
            CfgBranch(cfg_layout, uncond, when=Interval(uncond_interval), window=uncond_window),
        ],
        when=Interval(attention_interval), what=Reuse(), name="fastercache", paper="arXiv:2410.19355", **options,
    )
