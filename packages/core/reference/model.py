"""The reference image model: a tiny diffusers ``FluxTransformer2DModel`` over packed pixels.

Why the real class: every forecache adapter, preset and benchmark that targets Flux applies to it
unchanged, while its weights stay small enough (≈3.4 M parameters, ≈6.8 MB in bfloat16) to commit.

Pixels play the role of Flux's VAE latents: an image (B, 3, 32, 32) in [0, 1] is mapped to
[-1, 1] and packed into 2×2 patches exactly as ``FluxPipeline._pack_latents`` packs latents, giving
256 tokens of 12 channels; ``img_ids`` and ``txt_ids`` are built as ``FluxPipeline`` builds them
(row, column in channels 1 and 2; zeros for text).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .shapes import SIZE
from .text import ShapesTextEncoder

REFERENCE_CONFIG: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 12,  # 3 colour channels × a 2×2 patch
    "out_channels": None,
    "num_layers": 3,  # dual-stream (MMDiT) blocks
    "num_single_layers": 6,  # single-stream blocks
    "attention_head_dim": 32,
    "num_attention_heads": 4,  # width 128
    "joint_attention_dim": 64,  # = ShapesTextEncoder dim
    "pooled_projection_dim": 64,  # = ShapesTextEncoder pooled_dim
    "guidance_embeds": False,
    "axes_dims_rope": (8, 12, 12),  # sums to attention_head_dim
}
DEFAULT_PATH = "models/shapes-flux"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
GRID = SIZE // 2  # tokens per side after 2×2 packing


def build_model(seed: int = 0, **overrides: Any) -> nn.Module:
    """A freshly initialised reference FluxTransformer2DModel (``REFERENCE_CONFIG`` + overrides)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(**{**REFERENCE_CONFIG, **overrides})


def pack(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, H/2 · W/2, 4C): 2×2 patches, as ``FluxPipeline._pack_latents``."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """Inverse of :func:`pack` for a square ``size``×``size`` image."""
    b, _, channels = tokens.shape
    x = tokens.view(b, size // 2, size // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels // 4, size, size)


def pack_images(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, 32, 32) in [0, 1] → model space: (B, 256, 12) in [-1, 1]."""
    return pack(images * 2 - 1)


def unpack_images(tokens: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """Model space → images (B, 3, size, size), clamped to [0, 1]."""
    return ((unpack(tokens, size) + 1) / 2).clamp(0, 1)


def image_ids(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(256, 3) position ids of the packed tokens, as ``FluxPipeline._prepare_latent_image_ids``."""
    ids = torch.zeros(GRID, GRID, 3)
    ids[..., 1] = torch.arange(GRID)[:, None]
    ids[..., 2] = torch.arange(GRID)[None, :]
    return ids.reshape(GRID * GRID, 3).to(device, dtype)


def text_ids(length: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(length, 3) zeros: Flux gives text tokens no position."""
    return torch.zeros(length, 3, device=device, dtype=dtype)


def resolve(path: str | Path) -> Path:
    """``path`` as given, or relative to the repository root when it is relative and absent here."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    root = Path(__file__).resolve().parents[3]
    return root / path if (root / path).exists() else path


def save_reference(
    model: nn.Module, encoder: ShapesTextEncoder, path: str | Path, dtype: torch.dtype = torch.bfloat16,
    extra: dict | None = None,
) -> Path:
    """Write ``model.safetensors`` (weights in ``dtype``) and ``config.json`` (transformer and text
    encoder configs, plus ``extra``, e.g. the training recipe) into ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / WEIGHTS))
    transformer = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.config.items() if not k.startswith("_")}
    config = {
        "transformer_class": type(model).__name__,
        "transformer": transformer,
        "text_encoder": encoder.to_dict(),
        "weights_dtype": str(dtype).removeprefix("torch."),
        **(extra or {}),
    }
    (path / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return path


def load_reference(
    path: str | Path = DEFAULT_PATH, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> tuple[nn.Module, ShapesTextEncoder]:
    """Load the committed reference model: (FluxTransformer2DModel in eval mode, its text encoder).

    Weights are stored in bfloat16 and cast to ``dtype`` (float32 by default, for CPU sampling).
    """
    from diffusers import FluxTransformer2DModel

    folder = resolve(path)
    if not (folder / WEIGHTS).exists() or not (folder / CONFIG).exists():
        raise FileNotFoundError(
            f"no reference model at {folder} (needs {WEIGHTS} and {CONFIG}); train one with "
            f"`python -m forecache.core.reference.train_image --out {path}`"
        )
    config = json.loads((folder / CONFIG).read_text())
    transformer = dict(config["transformer"])
    if "axes_dims_rope" in transformer:
        transformer["axes_dims_rope"] = tuple(transformer["axes_dims_rope"])
    model = FluxTransformer2DModel.from_config(transformer)
    model.load_state_dict(load_file(str(folder / WEIGHTS)), strict=True)
    model = model.to(device) if dtype == torch.float32 else model.to(device, dtype)
    model.eval().requires_grad_(False)
    return model, ShapesTextEncoder.from_dict(config["text_encoder"])
