"""Molecule sizes at generation time: the training set's histogram of atom counts, saved beside the
weights (``sizes.json``), and the sampler's mask for sizes drawn from it (as EDM, arXiv 2203.17003, draws
the number of atoms from the training distribution)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch

SIZES = "sizes.json"


def size_histogram(molecules) -> dict[int, int]:
    """Atom count -> number of molecules."""
    return dict(sorted(Counter(m.num_atoms for m in molecules).items()))


def save_sizes(folder: str | Path, histogram: dict[int, int]) -> Path:
    path = Path(folder) / SIZES
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"atoms": {str(k): v for k, v in sorted(histogram.items())}}, indent=1) + "\n")
    return path


def load_sizes(folder: str | Path) -> dict[int, int]:
    """The histogram :func:`save_sizes` wrote into ``folder``."""
    path = Path(folder) / SIZES
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: it holds the atom-count histogram that generation draws sizes "
                                "from; forecache.science.train writes it (or write one with forecache.science.sizes.save_sizes)")
    return {int(k): int(v) for k, v in json.loads(path.read_text())["atoms"].items()}


def draw_sizes(histogram: dict[int, int], n: int, generator: torch.Generator | None = None) -> list[int]:
    """``n`` atom counts drawn from ``histogram`` (atom count -> frequency), as EDM draws N from the training
    set's size distribution."""
    counts = sorted(histogram)
    weights = torch.tensor([float(histogram[c]) for c in counts])
    picks = torch.multinomial(weights, n, replacement=True, generator=generator)
    return [counts[i] for i in picks.tolist()]


def atom_mask(sizes: list[int], max_atoms: int | None = None) -> torch.Tensor:
    """The sampler's ``(B, N)`` bool mask for molecules of these sizes (``N = max(sizes)`` by default)."""
    n = max_atoms if max_atoms is not None else max(sizes, default=0)
    return torch.arange(n).unsqueeze(0) < torch.tensor(sizes).unsqueeze(1)
