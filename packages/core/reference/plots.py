"""Figures for the reference model's card: the training loss curve and a grid of samples with
their prompts (titles green where the detector reads all three attributes right, red otherwise)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .detector import detect
from .shapes import Condition


def loss_curve(losses: Sequence[float], path: str | Path, smooth: int = 100) -> None:
    """Per-step training loss (faint) and its running mean over ``smooth`` steps, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = torch.tensor(list(losses), dtype=torch.float64)
    kernel = min(smooth, len(values))
    running = torch.nn.functional.avg_pool1d(values.view(1, 1, -1), kernel, stride=1).flatten()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(values.numpy(), alpha=0.25, lw=0.5, label="per step")
    ax.plot(range(kernel - 1, len(values)), running.numpy(), lw=1.5, label=f"mean of {kernel}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE on v = ε − x0")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sample_grid(images: torch.Tensor, conditions: Sequence[Condition], path: str | Path, columns: int = 8) -> None:
    """Images (B, 3, H, W) in [0, 1], each titled with its prompt."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (len(images) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.5, rows * 1.75), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, cond in zip(axes.flat, images, conditions):
        d = detect(image)
        ok = (d.shape, d.colour, d.position) == (cond.shape, cond.colour, cond.position)
        ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        ax.set_title(f"{cond.colour} {cond.shape}\nat the {cond.position}", fontsize=7, color="green" if ok else "red")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
