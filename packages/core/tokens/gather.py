"""Per-row token gather and scatter: the addressing every token-level cache shares.

A token subset is given per row as absolute positions ``pos``, a LongTensor ``(B, n)`` (or ``(1, n)``: the same
positions for every row). Rows may pick different tokens — that is how the rows of a batch, and the two halves of
a CFG batch, decide independently — but every row picks the same *number* ``n``; a row with fewer tokens to
recompute pads its list (see :func:`changed_first`). A position listed twice in a row is read twice and written
twice; the writes carry the same value when they come from the same computation.

The token axis ``dim`` may be any axis but the batch axis: ``1`` for hidden states ``(B, L, D)``, ``2`` for
per-head keys/values ``(B, H, L, hd)``.

Positions are not bounds-checked here (that would cost a device sync on every call); an out-of-range position
fails inside ``gather``/``scatter`` as torch reports it.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _token_axis(t: Tensor, pos: Tensor, dim: int, fn: str, name: str = "t") -> int:
    """Validate ``pos`` against ``t`` and return ``dim`` as a non-negative axis."""
    if pos.dim() != 2:
        raise ValueError(f"{fn}: pos has shape {tuple(pos.shape)}; pass per-row positions (B, n)")
    if pos.dtype != torch.long:  # gather/scatter take int64 indices only
        raise ValueError(f"{fn}: pos has dtype {pos.dtype}; pass int64 positions (pos.long())")
    axis = dim + t.dim() if dim < 0 else dim
    if not 1 <= axis < t.dim():
        raise ValueError(
            f"{fn}: dim={dim} is not a token axis of {name} with shape {tuple(t.shape)}; pass an axis other "
            "than the batch axis 0"
        )
    if pos.shape[0] not in (1, t.shape[0]):
        raise ValueError(
            f"{fn}: pos has {pos.shape[0]} rows but {name} has batch size {t.shape[0]}; pass one row of positions "
            "per batch row (or a single row shared by all)"
        )
    return axis


def _index(t_shape: tuple[int, ...], pos: Tensor, axis: int) -> Tensor:
    """``pos`` broadcast to a gather/scatter index: ``t_shape`` with ``n`` on ``axis`` (a view, no copy)."""
    view = [1] * len(t_shape)
    view[0], view[axis] = pos.shape
    full = list(t_shape)
    full[axis] = pos.shape[1]
    return pos.view(view).expand(full)


def take_tokens(t: Tensor, pos: Tensor, dim: int = 1) -> Tensor:
    """The tokens ``pos`` (B, n) of each row of ``t``, whose token axis is ``dim``.

    ``(B, L, D)`` with ``dim=1`` gives ``(B, n, D)``; ``(B, H, L, hd)`` with ``dim=2`` gives ``(B, H, n, hd)``.
    Returns a new tensor (``gather``), never a view of ``t``.
    """
    axis = _token_axis(t, pos, dim, "take_tokens")
    return t.gather(axis, _index(tuple(t.shape), pos, axis))


def _check_src(t: Tensor, pos: Tensor, src: Tensor, axis: int, fn: str) -> None:
    want = list(t.shape)
    want[axis] = pos.shape[1]
    if list(src.shape) != want:
        raise ValueError(
            f"{fn}: src has shape {tuple(src.shape)}, expected {tuple(want)} (t's shape with pos's {pos.shape[1]} "
            f"tokens on axis {axis}); gather src with take_tokens(t, pos, dim={axis}) or fix pos"
        )


def put_tokens(t: Tensor, pos: Tensor, src: Tensor, dim: int = 1) -> Tensor:
    """A copy of ``t`` with ``src`` written at each row's positions ``pos`` (B, n) on the token axis ``dim``.

    ``src`` has ``t``'s shape with ``n`` tokens on ``dim`` and is cast to ``t``'s dtype. ``t`` is left unchanged;
    see :func:`put_tokens_` for the in-place form.
    """
    axis = _token_axis(t, pos, dim, "put_tokens")
    _check_src(t, pos, src, axis, "put_tokens")
    return t.scatter(axis, _index(tuple(t.shape), pos, axis), src.to(t.dtype))


def put_tokens_(t: Tensor, pos: Tensor, src: Tensor, dim: int = 1) -> Tensor:
    """:func:`put_tokens` in place: writes ``src`` into ``t`` at ``pos`` and returns ``t`` (torch's ``op_``
    convention). For stores that persist across calls (a K/V cache, cached outputs)."""
    axis = _token_axis(t, pos, dim, "put_tokens_")
    _check_src(t, pos, src, axis, "put_tokens_")
    return t.scatter_(axis, _index(tuple(t.shape), pos, axis), src.to(t.dtype))


def changed_first(changed: Tensor) -> Tensor | None:
    """Indices (B, m) into each row of ``changed`` (bool (B, n)): the row's flagged tokens first, in order,
    ``m`` = the largest count of any row; ``None`` when no row flags any.

    Turns per-row masks of different counts (tokens whose input changed, an edit region) into the rectangular
    ``pos`` the functions here take. Rows with fewer flagged tokens are filled up with their unflagged ones,
    lowest first: the caller then computes those too — exact where recomputing a token is (a token-wise module,
    an unchanged input), only wasted work. ``changed`` of shape (B, L) gives positions directly; of a subset's
    shape (B, n), indices into that subset (``pos.gather(1, idx)`` maps them back).
    """
    if changed.dim() != 2 or changed.dtype != torch.bool:
        raise ValueError(
            f"changed_first: changed has shape {tuple(changed.shape)} and dtype {changed.dtype}; pass a bool mask "
            "(B, n)"
        )
    m = int(changed.sum(-1).max()) if changed.numel() else 0
    if m == 0:
        return None
    return (~changed).long().argsort(dim=-1, stable=True)[:, :m]
