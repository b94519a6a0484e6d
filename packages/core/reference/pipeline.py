"""ShapesPipeline: rectified-flow Euler sampling of the reference model, the FluxPipeline way.

A diffusers ``DiffusionPipeline`` with three registered components, ``transformer``, ``encoder`` and ``scheduler`` (a real
``FlowMatchEulerDiscreteScheduler`` with FLUX.1's config), so ``apply(pipe, policy)``, diffusers' cache
hooks and cache-dit all treat it as they treat ``FluxPipeline``. Like ``FluxPipeline.__call__`` it sets
``_current_timestep`` before each step, runs the transformer inside its ``cache_context("cond")`` (and
``"uncond"``), and resets stateful hooks at the end (``maybe_free_model_hooks``). The step loop: sigmas ``linspace(1, 1/n, n)``
with the resolution-dependent shift ``mu`` (0.5 for 256 tokens), the transformer called with
``timestep = t / 1000`` (that is, sigma), and ``scheduler.step`` doing the Euler update
``x ← x + (σ_next − σ)·v`` with ``v`` the predicted ε − x0.

Classifier-free guidance (``guidance_scale`` > 1) runs two sequential transformer calls per step,
conditional first, then unconditional (the empty prompt), and mixes
``v = v_uncond + g·(v_cond − v_uncond)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers import DiffusionPipeline
from torch import nn

from .model import image_ids, pack, text_ids, unpack_images
from .shapes import SIZE
from .text import ShapesTextEncoder

FLUX_SCHEDULER_CONFIG = {  # FLUX.1-dev's scheduler_config.json
    "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
    "base_image_seq_len": 256, "max_image_seq_len": 4096,
}


def flux_scheduler():
    """A ``FlowMatchEulerDiscreteScheduler`` configured as FLUX.1's."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG)


def flux_mu(image_seq_len: int, config) -> float:
    """The schedule shift ``FluxPipeline`` uses (``calculate_shift``): linear in the token count."""
    lo, hi = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base, top = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    return base + (top - base) * (image_seq_len - lo) / (hi - lo)


class ShapesPipeline(DiffusionPipeline):
    """Prompts → images (B, 3, 32, 32) in [0, 1] from the reference model.

    ``pipe(["a red circle at the left"], num_inference_steps=28, seed=0)``. The initial noise is
    drawn on the CPU from ``seed``, so a seed gives the same start on any device. The text encoder
    is a fixed table, registered as a component like the others.
    """

    def __init__(self, transformer: nn.Module, encoder: ShapesTextEncoder, scheduler=None) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, encoder=encoder,
                              scheduler=scheduler if scheduler is not None else flux_scheduler())
        self._current_timestep = None

    @torch.no_grad()
    def __call__(
        self, prompts: str | Sequence[str], num_inference_steps: int = 28, seed: int = 0,
        guidance_scale: float | None = None, progress: bool = False,
    ) -> torch.Tensor:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps={num_inference_steps}; use 1 or more")
        param = next(self.transformer.parameters())
        device, dtype = param.device, param.dtype
        batch = len(prompts)
        cond = self._inputs(prompts, device, dtype)
        cfg = guidance_scale is not None and guidance_scale > 1.0
        uncond = self._inputs([""] * batch, device, dtype) if cfg else None

        noise = torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
        latents = pack(noise).to(device)
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        mu = flux_mu(latents.shape[1], self.scheduler.config)
        self.scheduler.set_timesteps(sigmas=sigmas, mu=mu, device=device)
        steps = self.scheduler.timesteps
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="sampling")
        for t in steps:
            self._current_timestep = t
            timestep = t.expand(batch).to(dtype) / 1000
            with self.transformer.cache_context("cond"):
                v = self.transformer(hidden_states=latents.to(dtype), timestep=timestep, **cond, return_dict=False)[0]
            if cfg:
                with self.transformer.cache_context("uncond"):
                    v_uncond = self.transformer(
                        hidden_states=latents.to(dtype), timestep=timestep, **uncond, return_dict=False
                    )[0]
                v = v_uncond + guidance_scale * (v - v_uncond)
            latents = self.scheduler.step(v, t, latents, return_dict=False)[0]
        self._current_timestep = None
        self.maybe_free_model_hooks()
        return unpack_images(latents.float()).cpu()

    def _inputs(self, prompts: list[str], device, dtype) -> dict[str, torch.Tensor]:
        states, pooled = self.encoder(prompts, device, dtype)
        return {
            "encoder_hidden_states": states, "pooled_projections": pooled,
            "txt_ids": text_ids(states.shape[1], device, dtype), "img_ids": image_ids(device, dtype),
        }


def sample(
    model: nn.Module, encoder: ShapesTextEncoder, prompts: str | Sequence[str], steps: int = 28, seed: int = 0,
    guidance_scale: float | None = None,
) -> torch.Tensor:
    """Images (B, 3, 32, 32) in [0, 1]: ``ShapesPipeline(model, encoder)(prompts, steps, seed, ...)``."""
    return ShapesPipeline(model, encoder)(prompts, num_inference_steps=steps, seed=seed, guidance_scale=guidance_scale)
