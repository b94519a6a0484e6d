"""A deterministic, training-free detector for Shapes images: what shape, colour and position does a
generated 32×32 image show? Used to score how well the reference model follows its prompt.

How it reads one image:

1. background = per-channel median of the one-pixel border (the shapes never touch it);
2. foreground = pixels whose RGB distance from the background exceeds half the image's strong
   contrast (the 99th percentile of that distance), keeping the largest 4-connected component so
   stray specks do not move the box;
3. colour = nearest ``PALETTE`` entry to the mean RGB of the foreground;
4. position = nearest ``ANCHORS`` entry to the centre of the foreground's bounding box;
5. shape = the anti-aliased template (circle, square, upright triangle, drawn by
   ``shapes.coverage``, centred on that box, half-width and half-height each searched within
   [-1, +0.5] px of the box's, which a threshold at half contrast tends to overestimate) that best
   matches the soft foreground alpha (each pixel's projection onto the foreground-minus-background
   colour). Width and height are fitted separately so a model's slightly stretched triangle still
   reads as a triangle (the generator's shapes are as wide as they are tall). All three shapes
   share the same box, so the match decides on form alone (fill ratios of the box: square 1,
   ellipse π/4, triangle 1/2).

An image with no clear foreground (contrast under ``MIN_CONTRAST``) reads as ``None`` everywhere,
which counts as wrong on every attribute.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .shapes import ANCHORS, PALETTE, SHAPES, Condition, coverage

MIN_CONTRAST = 0.15
HALF_SEARCH = (-1.0, -0.5, 0.0, 0.5)


@dataclass(frozen=True)
class Detection:
    """What the detector read; a field is ``None`` when the image had no clear foreground."""

    shape: str | None
    colour: str | None
    position: str | None


def _largest_component(mask: torch.Tensor) -> torch.Tensor:
    """The largest 4-connected component of a boolean (H, W) mask (flood fill; images are tiny)."""
    h, w = mask.shape
    cells = mask.tolist()
    seen = [[False] * w for _ in range(h)]
    best: list[tuple[int, int]] = []
    for i in range(h):
        for j in range(w):
            if not cells[i][j] or seen[i][j]:
                continue
            stack, comp = [(i, j)], []
            seen[i][j] = True
            while stack:
                y, x = stack.pop()
                comp.append((y, x))
                for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                    if 0 <= ny < h and 0 <= nx < w and cells[ny][nx] and not seen[ny][nx]:
                        seen[ny][nx] = True
                        stack.append((ny, nx))
            if len(comp) > len(best):
                best = comp
    out = torch.zeros(h, w, dtype=torch.bool)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def _fit_shape(
    image: torch.Tensor, background: torch.Tensor, mask: torch.Tensor, cx: float, cy: float, hx: float, hy: float
) -> str:
    """The shape whose anti-aliased template, centred on the box, with half-width and half-height
    each searched within [-1, +0.5] px of the box's, best matches (least mean absolute error) the
    image's soft foreground alpha."""
    fg = image[:, mask].mean(dim=1) - background
    alpha = ((image - background.view(3, 1, 1)) * fg.view(3, 1, 1)).sum(0) / fg.dot(fg)
    alpha = alpha.clamp(0, 1)
    grid = torch.tensor([(hx + dx, hy + dy) for dx in HALF_SEARCH for dy in HALF_SEARCH])
    k = len(grid)
    centre_x, centre_y = torch.full((k,), cx), torch.full((k,), cy)
    best, best_err = SHAPES[0], float("inf")
    for name in SHAPES:
        templates = coverage(
            [name] * k, centre_x, centre_y, grid[:, 0], size=image.shape[-1], supersample=2, half_y=grid[:, 1]
        )
        err = (templates - alpha).abs().mean(dim=(1, 2)).min().item()
        if err < best_err:
            best, best_err = name, err
    return best


def detect(image: torch.Tensor) -> Detection:
    """Read one (3, H, W) image in [0, 1]."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"detect() takes one (3, H, W) image, got shape {tuple(image.shape)}; index the batch")
    image = image.detach().float().cpu()
    border = torch.cat([image[:, 0], image[:, -1], image[:, :, 0], image[:, :, -1]], dim=1)
    background = border.median(dim=1).values
    distance = (image - background.view(3, 1, 1)).norm(dim=0)
    strong = torch.quantile(distance.flatten(), 0.99).item()
    if strong < MIN_CONTRAST:
        return Detection(None, None, None)
    mask = _largest_component(distance > 0.5 * strong)
    ys, xs = torch.nonzero(mask, as_tuple=True)
    mean = image[:, mask].mean(dim=1)
    colour = min(PALETTE, key=lambda c: float((mean - torch.tensor(PALETTE[c])).norm()))
    x0, x1, y0, y1 = xs.min().item(), xs.max().item() + 1, ys.min().item(), ys.max().item() + 1
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    position = min(ANCHORS, key=lambda p: (ANCHORS[p][0] - cx) ** 2 + (ANCHORS[p][1] - cy) ** 2)
    shape = _fit_shape(image, background, mask, (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2)
    return Detection(shape, colour, position)


def conditioning_accuracy(images: torch.Tensor, conditions: Sequence[Condition | str]) -> dict[str, float]:
    """Fraction of ``images`` (B, 3, H, W) in [0, 1] whose detected shape, colour and position match
    ``conditions`` (``Condition`` objects or their descriptions), per attribute and all three at once.

    Returns ``{"shape", "colour", "position", "all", "n"}``.
    """
    if len(images) != len(conditions):
        raise ValueError(f"{len(images)} images but {len(conditions)} conditions; pass one condition per image")
    if len(images) == 0:
        raise ValueError("conditioning_accuracy() needs at least one image")
    conds = [Condition.parse(c) if isinstance(c, str) else c for c in conditions]
    hits = {"shape": 0, "colour": 0, "position": 0, "all": 0}
    for image, cond in zip(images, conds):
        d = detect(image)
        ok = (d.shape == cond.shape, d.colour == cond.colour, d.position == cond.position)
        for key, good in zip(("shape", "colour", "position"), ok):
            hits[key] += int(good)
        hits["all"] += int(all(ok))
    n = len(conds)
    return {**{k: v / n for k, v in hits.items()}, "n": n}
