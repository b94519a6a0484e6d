"""Cache storage: dtype, byte accounting and the byte budget."""

from __future__ import annotations

import torch


def nbytes(tensors) -> int:
    """The bytes of the elements of ``tensors`` (``None`` entries count nothing)."""
    n = 0
    for t in tensors:  # a loop, not a generator: storage counts on the hot path
        if t is not None:
            n += t.numel() * t.element_size()
    return n


class CacheBudgetError(RuntimeError):
    """The cache needs more bytes than ``max_cache_bytes`` allows."""


class Shared:
    """A tensor kept once for several users (the rows of one site call, each holding a row of it):
    its bytes are counted once and given back when the last user lets go."""

    __slots__ = ("tensor", "users")

    def __init__(self, tensor: torch.Tensor, users: int) -> None:
        self.tensor, self.users = tensor, users


class Storage:
    """Owns every tensor a handle keeps across steps, so its size is known and bounded.

    ``dtype`` stores cached features in a smaller type (e.g. ``torch.bfloat16``); forecasters
    compute in float32 and the result is cast back to the model's dtype, so only storage shrinks.
    """

    def __init__(self, dtype: torch.dtype | None = None, max_bytes: int | None = None) -> None:
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"storage_dtype={dtype!r} is not a floating torch.dtype; use e.g. torch.bfloat16 or None")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"max_cache_bytes={max_bytes} must be positive, or None for no budget")
        self.dtype = dtype
        self.max_bytes = max_bytes
        self.bytes = 0
        self.peak_bytes = 0

    def keep(self, x: torch.Tensor) -> torch.Tensor:
        """A detached copy of ``x`` owned by the cache."""
        return self.keep_all((x,))[0]

    def keep_all(self, values) -> list[torch.Tensor]:
        """Detached copies of ``values``, counted together: over the budget, none is kept."""
        dtype = self.dtype
        return self._count([x.detach().to(dtype=dtype or x.dtype, copy=True) for x in values])

    def adopt(self, values) -> list[torch.Tensor]:
        """``values`` handed over to the cache as they are (the caller writes them no more), their
        bytes counted together (over the budget, none is kept); cast copies when a storage dtype is set."""
        dtype = self.dtype
        return self._count([x.detach() if dtype in (None, x.dtype) else x.detach().to(dtype) for x in values])

    def _count(self, kept: list[torch.Tensor]) -> list[torch.Tensor]:
        self._grow(nbytes(kept))
        return kept

    def keep_shared(self, values, users: int) -> list[Shared]:
        """Detached copies of ``values`` (each kept once), each shared by ``users`` holders."""
        return [Shared(y, users) for y in self.keep_all(values)]

    def release(self, shared: Shared) -> None:
        """One holder of ``shared`` lets go; the last one frees its bytes."""
        shared.users -= 1
        if shared.users == 0:
            self.drop(shared.tensor)

    def drop(self, x: torch.Tensor) -> None:
        self.bytes -= x.numel() * x.element_size()

    def _grow(self, n: int) -> None:
        self.bytes += n
        if self.max_bytes is not None and self.bytes > self.max_bytes:
            need = self.bytes
            self.bytes -= n
            raise CacheBudgetError(
                f"the cache needs {need:,} bytes, over max_cache_bytes={self.max_bytes:,}. "
                "Raise max_cache_bytes, store in a smaller dtype (storage_dtype=torch.bfloat16), "
                "use a lower-order forecaster, or cache one cumulative residual (crf=True / a block span) "
                "instead of every layer's features"
            )
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    def reset_peak(self) -> None:
        self.peak_bytes = self.bytes
