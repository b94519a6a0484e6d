"""FasterCache's CFG-Cache (arXiv 2410.19355): skip the unconditional branch of classifier-free
guidance and rebuild it from the conditional output of the same step.

At a computed step the site stores ``delta = uncond − cond``. At a cached step the unconditional
output is ``cond + α_low^k · low(delta) + α_high^k · high(delta)``, where low/high split ``delta``
with FasterCache's FFT filter (a centred disc of radius min(H, W) // 5 over the spatial axes) and
``k`` counts the cached steps so far inside the band's update window (the reference code scales the
stored delta by α at every cached step inside that window: α_low = α_high = 1.1, windows
(99, 901) and (−1, 301) in timesteps of 1000, i.e. noise levels (0.099, 0.901) and (0, 0.301)).

Branch layouts: ``"sequential"`` — cond and uncond are two calls of one step (``uncond`` gives
the uncond call's index); ``"batched"`` — one call whose batch is [uncond rows; cond rows]
(``uncond`` = 0) or [cond; uncond] (``uncond`` = 1), as diffusers pipelines concatenate them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from ..rows import take_rows
from ..runtime import model_key
from .base import Site
from .module import flatten, rebuild

if TYPE_CHECKING:
    from ..runtime import Runtime


def band_split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FasterCache's low/high split. Spatial maps (…, H, W) are filtered over (H, W); token
    sequences (B, S, C) over their square token grid when S is a square, else along S."""
    if x.dim() == 3:
        side = math.isqrt(x.shape[1])
        if side * side == x.shape[1]:
            grid = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)
            low, high = band_split(grid)
            back = lambda y: y.reshape(x.shape[0], x.shape[2], -1).transpose(1, 2)  # noqa: E731
            return back(low), back(high)
        spec = torch.fft.fftshift(torch.fft.fft(x.float(), dim=1), dim=1)
        k = torch.arange(x.shape[1], device=x.device) - x.shape[1] // 2
        mask = (k.abs() <= x.shape[1] // 5).view(1, -1, 1)
        inv = lambda m: torch.fft.ifft(torch.fft.ifftshift(spec * m, dim=1), dim=1).real  # noqa: E731
        return inv(mask).to(x.dtype), inv(~mask).to(x.dtype)
    h, w = x.shape[-2:]
    spec = torch.fft.fftshift(torch.fft.fft2(x.float()), dim=(-2, -1))
    yy, xx = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
    mask = (xx - w // 2) ** 2 + (yy - h // 2) ** 2 <= (min(h, w) // 5) ** 2
    inv = lambda m: torch.fft.ifft2(torch.fft.ifftshift(spec * m, dim=(-2, -1))).real  # noqa: E731
    return inv(mask).to(x.dtype), inv(~mask).to(x.dtype)


class CfgSite(Site):
    """Caches the unconditional CFG branch of the whole model (a root-level site)."""

    root = True

    def __init__(
        self,
        name: str,
        runtime: Runtime,
        trigger,
        forecaster,
        layout: str = "sequential",
        uncond: int = 1,
        alpha_low: float = 1.1,
        alpha_high: float = 1.1,
        low_window: tuple[float, float] = (0.099, 0.901),
        high_window: tuple[float, float] = (0.0, 0.301),
        window: tuple[float, float] | None = None,
        key=None,
    ) -> None:
        super().__init__(name, runtime, trigger, forecaster, window, key)
        if layout not in ("sequential", "batched"):
            raise ValueError(f"CfgBranch.layout={layout!r}: use 'sequential' (two calls) or 'batched' (one call)")
        if uncond not in (0, 1):
            raise ValueError(f"CfgBranch.uncond={uncond}: the unconditional branch is 0 or 1")
        self.layout, self.uncond = layout, uncond
        self.pairs_rows = layout == "batched"  # a row's uncond and cond halves only run together
        self.alpha = (alpha_low, alpha_high)
        self.band_windows = (low_window, high_window)
        self._cond: tuple | None = None

    def install(self) -> None:
        """Root-level: the handle routes every model call through :meth:`intercept`."""

    def reset(self) -> None:
        super().reset()
        self._cond = None

    def intercept(self, call, *args, **kwargs) -> Any:
        ctx = self.runtime.context(self)
        if ctx is None:
            return call(*args, **kwargs)
        if self.layout == "batched":
            return self._batched(ctx, call, args, kwargs)
        if ctx.branch != self.uncond:
            out = call(*args, **kwargs)
            self._cond = (ctx.generation, ctx.index, *flatten(out))
            return out
        if self._cond is None or self._cond[:2] != (ctx.generation, ctx.index):
            return call(*args, **kwargs)  # no cond output of this step to rebuild from
        _, _, cond, template = self._cond
        plans = self.plan(ctx, cond[0])
        self._agree(plans)
        if plans[0].compute:
            out = call(*args, **kwargs)
            parts = flatten(out)[0]
            self.observe(ctx, plans, cond[0], parts, tuple(u - c for u, c in zip(parts, cond)))
            self._restart_bands(ctx, len(plans))
            return out
        self.runtime.skipped(model_key(args, kwargs), ctx.batch)
        self.observe(ctx, plans, cond[0], None, None)
        return rebuild(template, tuple(c + d for c, d in zip(cond, self._scaled(ctx, plans))))

    def _batched(self, ctx, call, args, kwargs) -> Any:
        if ctx.batch % 2:
            raise ValueError(f"{self.name}: layout='batched' needs an even batch [uncond; cond], got {ctx.batch}")
        n = ctx.batch // 2
        u_rows = torch.arange(n) + (0 if self.uncond == 0 else n)
        c_rows = torch.arange(n) + (n if self.uncond == 0 else 0)
        plans = self.plan(ctx, _first_tensor(args, kwargs), rows=range(n))
        self._agree(plans)
        if plans[0].compute:
            out = call(*args, **kwargs)
            parts = flatten(out)[0]
            delta = tuple(p[u_rows] - p[c_rows] for p in parts)
            self.observe(ctx, plans, None, None, delta, rows=range(n))
            self._restart_bands(ctx, n)
            return out
        sub_args = take_rows(args, c_rows, ctx.batch)
        sub_kwargs = take_rows(kwargs, c_rows, ctx.batch)
        self.runtime.skipped(model_key(args, kwargs), n)
        out = call(*sub_args, **sub_kwargs)
        cond, template = flatten(out)
        uncond = tuple(c + d for c, d in zip(cond, self._scaled(ctx, plans)))
        self.observe(ctx, plans, None, None, None, rows=range(n))
        pairs = zip(uncond, cond) if self.uncond == 0 else zip(cond, uncond)
        return rebuild(template, tuple(torch.cat(pair, dim=0) for pair in pairs))

    def _restart_bands(self, ctx, rows: int) -> None:
        for r in range(rows):
            self.history(ctx, r).extra["k"] = [0, 0]

    def _agree(self, plans) -> None:
        if len({p.compute for p in plans}) > 1:
            raise NotImplementedError(
                f"{self.name}: rows of one unconditional call decided differently; use a trigger "
                "whose decision rows share (Interval)"
            )

    def _scaled(self, ctx, plans) -> tuple[torch.Tensor, ...]:
        """The reused delta of every row, its bands scaled as FasterCache does."""
        level = ctx.noise
        rows = []
        for r, p in enumerate(plans):
            ks = self.history(ctx, r).extra.setdefault("k", [0, 0])
            for band, (lo, hi) in enumerate(self.band_windows):
                ks[band] += 1 if lo <= level <= hi else 0
            parts = []
            for d in p.value:
                low, high = band_split(d)
                parts.append(low * self.alpha[0] ** ks[0] + high * self.alpha[1] ** ks[1])
            rows.append(parts)
        return tuple(torch.cat(col, dim=0) for col in zip(*rows))


def _first_tensor(args, kwargs) -> torch.Tensor:
    return next(v for v in (*args, *kwargs.values()) if torch.is_tensor(v))
