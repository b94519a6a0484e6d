"""Shapes: a procedural conditional image dataset, generated in code, for the reference image model.

Each sample is a 32×32 RGB scene: one coloured shape on a plain dark-grey background, conditioned on

- shape: ``circle``, ``square``, ``triangle`` (upright, apex at the top);
- colour: ``red``, ``green``, ``blue``, ``yellow`` (``PALETTE`` gives the RGB of each);
- position: ``left``, ``right``, ``top``, ``bottom``, ``center`` (``ANCHORS`` gives each centre).

60 conditions in all. Each image varies within its condition: the shape's half-size is drawn from
[4.5, 6.5] px, its centre moves up to ±2 px from the anchor in each axis, its colour up to ±0.05 per
channel, and the background grey level is drawn from [0.08, 0.22]. Every shape, at every draw, lies
wholly inside the frame, and its bounding box is 2·half-size square whatever the shape. Edges are
anti-aliased by 4×4 supersampling. Everything is drawn from a seeded ``torch.Generator`` on the CPU,
so a seed gives the same images on any device. Images are (B, 3, 32, 32) floats in [0, 1].

Why this data: it is the smallest conditional image task where "did the model follow the prompt"
has an exact, training-free answer (``detector.py``), so cached and uncached samples can be scored
on task accuracy and not only on fidelity to each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SIZE = 32
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.10),
    "green": (0.12, 0.78, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.88, 0.12),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
ANCHORS: dict[str, tuple[float, float]] = {  # (x, y) in pixels, origin at the top-left corner
    "left": (9.0, 16.0),
    "right": (23.0, 16.0),
    "top": (16.0, 9.0),
    "bottom": (16.0, 23.0),
    "center": (16.0, 16.0),
}
POSITIONS: tuple[str, ...] = tuple(ANCHORS)
HALF_SIZE = (4.5, 6.5)
POSITION_JITTER = 2.0
COLOUR_JITTER = 0.05
BACKGROUND = (0.08, 0.22)
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Condition:
    """What one image shows: a shape, a colour and a position (names from the tuples above)."""

    shape: str
    colour: str
    position: str

    def __post_init__(self) -> None:
        for field, value, allowed in (
            ("shape", self.shape, SHAPES), ("colour", self.colour, COLOURS), ("position", self.position, POSITIONS)
        ):
            if value not in allowed:
                raise ValueError(f"{field}={value!r} is not one of {allowed}; pick one of those")

    @property
    def description(self) -> str:
        """The prompt for this condition, e.g. ``"a red circle at the left"``."""
        return f"a {self.colour} {self.shape} at the {self.position}"

    @classmethod
    def parse(cls, description: str) -> Condition:
        """Inverse of :attr:`description` (``"a red circle at the left"`` → Condition)."""
        words = description.lower().split()
        if len(words) != 6 or words[0] != "a" or words[3:5] != ["at", "the"]:
            raise ValueError(
                f"cannot parse {description!r}: expected 'a <colour> <shape> at the <position>'"
            )
        return cls(shape=words[2], colour=words[1], position=words[5])


ALL_CONDITIONS: tuple[Condition, ...] = tuple(
    Condition(s, c, p) for s in SHAPES for c in COLOURS for p in POSITIONS
)


def sample_conditions(n: int, generator: torch.Generator) -> list[Condition]:
    """``n`` conditions drawn uniformly (with replacement) from the 60."""
    idx = torch.randint(len(ALL_CONDITIONS), (n,), generator=generator)
    return [ALL_CONDITIONS[i] for i in idx.tolist()]


def _inside(shape: str, x: torch.Tensor, y: torch.Tensor, hx: torch.Tensor, hy: torch.Tensor) -> torch.Tensor:
    """Whether points (x, y), relative to the centre, lie inside ``shape`` with half-width ``hx``
    and half-height ``hy`` (equal for the generator; the detector also fits unequal ones)."""
    if shape == "circle":
        return (x / hx) ** 2 + (y / hy) ** 2 <= 1
    if shape == "square":
        return (x.abs() <= hx) & (y.abs() <= hy)
    # upright isosceles triangle: apex (0, -hy), base from (-hx, hy) to (hx, hy)
    return (y <= hy) & (2 * hy * x.abs() <= hx * (y + hy))


def coverage(
    shape: list[str], cx: torch.Tensor, cy: torch.Tensor, half: torch.Tensor, size: int = SIZE,
    supersample: int = SUPERSAMPLE, half_y: torch.Tensor | None = None,
) -> torch.Tensor:
    """Anti-aliased coverage in [0, 1], (B, size, size), of each shape at centre (cx, cy) px with
    half-size ``half`` px (half-width, when ``half_y`` gives a different half-height): the fraction
    of each pixel's ``supersample``² sub-samples inside it.

    Shared by the renderer and the detector (which fits these same templates to a mask).
    """
    device = cx.device
    sub = (torch.arange(size * supersample, device=device, dtype=torch.float32) + 0.5) / supersample
    x = sub.view(1, 1, -1) - cx.view(-1, 1, 1)
    y = sub.view(1, -1, 1) - cy.view(-1, 1, 1)
    hx = half.view(-1, 1, 1)
    hy = hx if half_y is None else half_y.view(-1, 1, 1)
    inside = torch.zeros(len(shape), size * supersample, size * supersample, device=device)
    for name in set(shape):
        rows = torch.tensor([i for i, s in enumerate(shape) if s == name], device=device)
        inside[rows] = _inside(name, x[rows], y[rows], hx[rows], hy[rows]).float()
    return torch.nn.functional.avg_pool2d(inside.unsqueeze(1), supersample).squeeze(1)


def render(
    conditions: list[Condition], generator: torch.Generator, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Images (B, 3, 32, 32) in [0, 1] of ``conditions``, jittered by draws from ``generator``."""
    n = len(conditions)
    u = torch.rand(n, 8, generator=generator)  # half, dx, dy, background, 3 colour jitters, spare
    half = HALF_SIZE[0] + (HALF_SIZE[1] - HALF_SIZE[0]) * u[:, 0]
    anchor = torch.tensor([ANCHORS[c.position] for c in conditions]).view(n, 2)
    cx = anchor[:, 0] + POSITION_JITTER * (2 * u[:, 1] - 1)
    cy = anchor[:, 1] + POSITION_JITTER * (2 * u[:, 2] - 1)
    grey = BACKGROUND[0] + (BACKGROUND[1] - BACKGROUND[0]) * u[:, 3]
    colour = torch.tensor([PALETTE[c.colour] for c in conditions]) + COLOUR_JITTER * (2 * u[:, 4:7] - 1)
    alpha = coverage([c.shape for c in conditions], cx.to(device), cy.to(device), half.to(device))
    alpha = alpha.unsqueeze(1)
    background = grey.to(device).view(n, 1, 1, 1)
    image = background * (1 - alpha) + colour.clamp(0, 1).to(device).view(n, 3, 1, 1) * alpha
    return image.clamp(0, 1)


def make_batch(
    n: int, seed: int | torch.Generator, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, list[Condition]]:
    """``n`` random (image, condition) pairs; the same seed gives the same batch on any device."""
    generator = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    conditions = sample_conditions(n, generator)
    return render(conditions, generator, device), conditions
