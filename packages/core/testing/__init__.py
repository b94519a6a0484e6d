"""Test helpers: tiny diffusers models with random weights (no downloads) and their inputs."""

from .tiny_models import (
    TINY_BUILDERS,
    tiny_cogvideox,
    tiny_flux,
    tiny_flux_pipeline,
    tiny_hunyuan_video,
    tiny_inputs,
    tiny_ltx_video,
    tiny_qwen_image,
    tiny_sd3,
    tiny_unet,
    tiny_wan,
)

__all__ = [
    "TINY_BUILDERS",
    "tiny_cogvideox",
    "tiny_flux",
    "tiny_flux_pipeline",
    "tiny_hunyuan_video",
    "tiny_inputs",
    "tiny_ltx_video",
    "tiny_qwen_image",
    "tiny_sd3",
    "tiny_unet",
    "tiny_wan",
]
