"""Conditioning accuracy of a Shapes model: sample prompts, read the images back with the detector.

    python -m forecache.core.reference.evaluate --model models/shapes-flux --samples 200 --steps 28

prints ``{"shape": ..., "colour": ..., "position": ..., "all": ..., "n": ...}``. The prompts cycle
through all 60 conditions in a fixed order (so 200 samples cover each condition 3 or 4 times) and
the noise comes from ``seed``: the same command gives the same number on the same machine.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from .detector import conditioning_accuracy, detect
from .shapes import ALL_CONDITIONS, Condition


def eval_conditions(n: int) -> list[Condition]:
    """The first ``n`` conditions of ALL_CONDITIONS repeated: balanced over the 60."""
    return [ALL_CONDITIONS[i % len(ALL_CONDITIONS)] for i in range(n)]


def grid_picks(count: int = 24) -> list[int]:
    """Indices into :func:`eval_conditions` (n ≥ 60) for a sample grid: ``count`` distinct
    conditions stepping by 13 (coprime with 60), so shapes, colours and positions all vary."""
    return sorted({(k * 13) % len(ALL_CONDITIONS) for k in range(count)})


def evaluate(
    pipe, samples: int = 200, steps: int = 28, seed: int = 0, guidance_scale: float | None = None,
    batch: int = 100,
) -> tuple[dict[str, float], torch.Tensor, list[Condition]]:
    """Sample ``samples`` images with ``pipe`` and score them; returns (accuracy, images, conditions).

    Batches of ``batch`` prompts use seeds ``seed``, ``seed + 1``, ...
    """
    conditions = eval_conditions(samples)
    images = []
    for k, start in enumerate(range(0, samples, batch)):
        prompts = [c.description for c in conditions[start : start + batch]]
        images.append(pipe(prompts, num_inference_steps=steps, seed=seed + k, guidance_scale=guidance_scale))
    images = torch.cat(images)
    return conditioning_accuracy(images, conditions), images, conditions


def main(argv: list[str] | None = None) -> None:
    from . import load_pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/shapes-flux")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance-scale", type=float, default=None, help="CFG scale; omit for none")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--grid", default=None, help="also write a PNG grid of 24 samples here (needs >= 60 samples)")
    args = parser.parse_args(argv)
    pipe = load_pipeline(args.model, device=args.device)
    start = time.perf_counter()
    accuracy, images, conditions = evaluate(pipe, args.samples, args.steps, args.seed, args.guidance_scale)
    accuracy["seconds"] = round(time.perf_counter() - start, 1)
    if args.grid:
        from .plots import sample_grid

        picks = grid_picks() if len(images) >= len(ALL_CONDITIONS) else list(range(min(len(images), 24)))
        sample_grid(images[picks], [conditions[i] for i in picks], args.grid)
    for image, cond in zip(images, conditions):
        d = detect(image)
        if (d.shape, d.colour, d.position) != (cond.shape, cond.colour, cond.position):
            print(f"miss: {cond.description!r} read as {d}")
    print(json.dumps(accuracy))


if __name__ == "__main__":
    main()
