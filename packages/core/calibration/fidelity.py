"""A default fidelity measure for threshold searches: PSNR against the uncached output."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def as_array(x: Any) -> np.ndarray:
    """A float64 array from a tensor, an array, a PIL image, a list of those, or a diffusers
    pipeline output (its ``images``, ``frames`` or ``audios``)."""
    for attr in ("images", "frames", "audios"):
        if hasattr(x, attr) and not isinstance(x, (torch.Tensor, np.ndarray)):
            return as_array(getattr(x, attr))
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    if isinstance(x, (list, tuple)):
        return np.stack([as_array(v) for v in x])
    return np.asarray(x, dtype=np.float64)


def psnr(output: Any, reference: Any, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio of ``output`` against ``reference`` in dB (higher is better;
    ``inf`` when identical). ``data_range`` defaults to the reference's peak-to-peak range (1 when
    the reference is constant), so it suits images in [0, 1] or [0, 255] and latents alike."""
    out, ref = as_array(output), as_array(reference)
    if out.shape != ref.shape:
        raise ValueError(f"psnr: output shape {out.shape} differs from reference shape {ref.shape}; "
                         "compare outputs of the same generation")
    if data_range is None:
        data_range = float(np.ptp(ref)) or 1.0
    mse = float(np.mean((out - ref) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)
