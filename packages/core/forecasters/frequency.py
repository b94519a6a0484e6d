"""FrequencySplit: FreqCa's frequency-aware caching, one forecaster per frequency band."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .base import Forecaster
from .differences import compute_dtype
from .hermite import Hermite
from .reuse import Reuse


def _freqca_high() -> Forecaster:
    return Hermite(order=2, sigma=0.71)


def _dct_basis(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``C`` (``C @ C.T = I``): coefficients are ``C @ x``."""
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    c = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c.to(dtype=dtype, device=device)


def _fft_max(n: int) -> float:
    """Largest ``|frequency|`` of an ``n``-point FFT, in cycles per sample."""
    return (n // 2) / n


@dataclass(frozen=True)
class FrequencySplit(Forecaster):
    """Split each feature into low and high frequency bands and forecast each band on its own.

    FreqCa ("Accelerating Image Generation and Editing via Frequency-Aware Caching",
    arXiv 2510.08669) observes that the low-frequency part of a diffusion feature is nearly
    identical from step to step while the high-frequency part changes more but smoothly, so it
    reuses the low band and forecasts the high band with a second-order Hermite predictor:
    ``z = z_low + z_high``, ``z^_low = z_low(t_n)``, ``z^_high = Hermite(z_high history)``.

    The split follows the reference code (``decomposition_FFT`` / ``decomposition_DCT`` in
    FreqCa's ``cache_utils.py``): token features ``(..., S, C)`` are transformed over the token
    axis ``dim``, either as one sequence with an FFT (FreqCa's Qwen-Image setting) or, with
    ``grid=(h, w)`` giving the token layout (row-major), as an ``h x w`` image with an
    orthonormal 2D DCT-II (its FLUX setting). A coefficient is low when its frequency radius
    is at most ``cutoff`` times the largest radius of the transform (FFT: ``|f|`` in cycles per
    token, ``sqrt(fh² + fw²)`` in 2D; DCT: ``sqrt(kh² + kw²)`` over ``sqrt((h-1)² + (w-1)²)``).
    ``transform`` overrides the choice ("fft" or "dct", in 1D or 2D; a 1D DCT builds an
    ``S x S`` matrix, so prefer the FFT for long sequences).

    Defaults, from the reference code: ``low=Reuse()`` (its order-0 low band), ``high=Hermite(
    order=2, sigma=0.71)`` (its ``hermite_formula`` hard-codes the contraction 0.71 and uses
    ``max_order=2``), ``cutoff=0.1``, ``dim=-2`` (the token axis of ``(B, S, C)``),
    ``grid=None`` (FFT along the tokens).

    The split is linear and lossless: the low band is an orthogonal projection and the high
    band is the remainder, so ``low + high`` is the input up to rounding and the forecast is
    exact whenever both band forecasters are. The band forecasters get their own ``state``.
    Nothing extra is cached: bands are recomputed from the computed history when forecasting,
    so the cache (and its byte budget) holds only the features themselves.
    """

    low: Forecaster = field(default_factory=Reuse)
    high: Forecaster = field(default_factory=_freqca_high)
    cutoff: float = 0.1
    grid: tuple[int, int] | None = None
    dim: int = -2
    transform: str | None = None
    _bases: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def min_history(self) -> int:  # type: ignore[override]
        return max(self.low.min_history, self.high.min_history)

    @property
    def max_history(self) -> int:  # type: ignore[override]
        return max(self.low.max_history, self.high.max_history)

    @property
    def kind(self) -> str:
        """The transform in use: ``transform`` if given, else "dct" with a grid and "fft" without."""
        if self.transform is not None:
            return self.transform
        return "fft" if self.grid is None else "dct"

    def validate(self) -> None:
        for name in ("low", "high"):
            f = getattr(self, name)
            if not isinstance(f, Forecaster):
                raise ValueError(f"FrequencySplit.{name}={f!r} must be a Forecaster, e.g. Reuse(), Hermite(2)")
            f.validate()
        c = self.cutoff
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not (0.0 < c < 1.0):
            raise ValueError(
                f"FrequencySplit.cutoff={c!r} must be a float in (0, 1): the fraction of the largest "
                "frequency kept in the low band (FreqCa uses 0.1)"
            )
        g = self.grid
        positive = lambda x: isinstance(x, int) and not isinstance(x, bool) and x > 0  # noqa: E731
        if g is not None and not (isinstance(g, tuple) and len(g) == 2 and all(map(positive, g))):
            raise ValueError(
                f"FrequencySplit.grid={g!r} must be None or a tuple (h, w) of positive ints with h * w tokens"
            )
        if isinstance(self.dim, bool) or not isinstance(self.dim, int):
            raise ValueError(f"FrequencySplit.dim={self.dim!r} must be an int: the token axis, -2 for (B, S, C)")
        if self.transform not in (None, "fft", "dct"):
            raise ValueError(f"FrequencySplit.transform={self.transform!r} must be None, 'fft' or 'dct'")

    def bind(self, adapter) -> FrequencySplit:
        low, high = self.low.bind(adapter), self.high.bind(adapter)
        if low is self.low and high is self.high:
            return self
        return dataclasses.replace(self, low=low, high=high)

    def describe(self) -> dict:
        return {
            "low": {"type": type(self.low).__name__, **self.low.describe()},
            "high": {"type": type(self.high).__name__, **self.high.describe()},
            "cutoff": self.cutoff,
            "grid": None if self.grid is None else list(self.grid),
            "dim": self.dim,
            "transform": self.kind,
        }

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(low, high)`` bands of one feature, in at least float32; ``low + high == x``."""
        x = x.to(compute_dtype(x))
        low = self._low_band(x)
        return low, x - low

    def predict(
        self, times: Sequence[float], values: Sequence[torch.Tensor], t: float, state: dict
    ) -> torch.Tensor:
        bands = [self.split(v) for v in values]
        k_lo, k_hi = self.low.max_history, self.high.max_history
        lo = self.low.predict(times[-k_lo:], [b[0] for b in bands[-k_lo:]], t, state.setdefault("low", {}))
        hi = self.high.predict(times[-k_hi:], [b[1] for b in bands[-k_hi:]], t, state.setdefault("high", {}))
        return (lo + hi).to(values[-1].dtype)

    def _low_band(self, x: torch.Tensor) -> torch.Tensor:
        d = self.dim if self.dim >= 0 else x.dim() + self.dim
        if not 0 <= d < x.dim():
            raise ValueError(f"FrequencySplit.dim={self.dim} is out of range for shape {tuple(x.shape)}")
        y = x.movedim(d, -1)  # tokens last, so the transforms act on the trailing axes
        n = y.shape[-1]
        if self.grid is None:
            low = self._low_1d(y)
        else:
            h, w = self.grid
            if h * w != n:
                raise ValueError(
                    f"FrequencySplit.grid={self.grid} has {h * w} tokens but the feature has {n} along "
                    f"dim={self.dim} (shape {tuple(x.shape)}); pass the latent's token grid or grid=None"
                )
            low = self._low_2d(y.reshape(*y.shape[:-1], h, w)).reshape(y.shape)
        return low.movedim(-1, d)

    def _low_1d(self, y: torch.Tensor) -> torch.Tensor:
        n = y.shape[-1]
        if self.kind == "fft":
            f = torch.fft.rfftfreq(n, device=y.device)
            keep = (f <= self.cutoff * _fft_max(n)).to(y.dtype)
            return torch.fft.irfft(torch.fft.rfft(y, dim=-1) * keep, n=n, dim=-1)
        c = self._basis(n, y)
        keep = (torch.arange(n, device=y.device) <= self.cutoff * (n - 1)).to(y.dtype)
        return ((y @ c.T) * keep) @ c

    def _low_2d(self, y: torch.Tensor) -> torch.Tensor:
        h, w = y.shape[-2:]
        if self.kind == "fft":
            fh = torch.fft.fftfreq(h, device=y.device).unsqueeze(1)
            fw = torch.fft.rfftfreq(w, device=y.device).unsqueeze(0)
            radius = (fh**2 + fw**2).sqrt()
            keep = (radius <= self.cutoff * math.hypot(_fft_max(h), _fft_max(w))).to(y.dtype)
            return torch.fft.irfft2(torch.fft.rfft2(y) * keep, s=(h, w))
        ch, cw = self._basis(h, y), self._basis(w, y)
        kh = torch.arange(h, device=y.device, dtype=y.dtype).unsqueeze(1)
        kw = torch.arange(w, device=y.device, dtype=y.dtype).unsqueeze(0)
        keep = ((kh**2 + kw**2).sqrt() <= self.cutoff * math.hypot(h - 1, w - 1)).to(y.dtype)
        return ch.T @ ((ch @ y @ cw.T) * keep) @ cw

    def _basis(self, n: int, like: torch.Tensor) -> torch.Tensor:
        key = (n, like.dtype, str(like.device))
        if key not in self._bases:
            self._bases[key] = _dct_basis(n, like.dtype, like.device)
        return self._bases[key]
