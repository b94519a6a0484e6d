"""Quickstart: cache a (tiny, random-weight) Flux pipeline with TeaCache and TaylorSeer.

Runs offline on the CPU in seconds. With a real model, replace tiny_flux_pipeline() by
FluxPipeline.from_pretrained("black-forest-labs/FLUX.1-dev"); nothing else changes.
"""

import torch

from forecache.core import apply, taylorseer, teacache
from forecache.core.testing.tiny_models import tiny_flux_pipeline

pipe = tiny_flux_pipeline()
run = lambda: pipe("a red square", num_inference_steps=20, height=32, width=32, output_type="pt",  # noqa: E731
                   generator=torch.Generator().manual_seed(0)).images
reference = run()

for policy in (teacache(threshold=0.4), taylorseer()):
    handle = apply(pipe, policy)
    image = run()
    print(f"--- {policy.name} ({policy.paper})")
    print(handle.stats())
    print(f"max |cached - uncached| = {(image - reference).abs().max():.4f}")
    handle.remove()
