"""forecache.core.reference: the small reference image model the project trains itself.

- ``shapes``: procedural conditional data (coloured shapes at positions, 32×32);
- ``text``: a fixed word-table text encoder for its prompts;
- ``detector``: a training-free reader of (shape, colour, position), for conditioning accuracy;
- ``model``: a tiny diffusers FluxTransformer2DModel over packed pixels, save/load;
- ``pipeline``: FluxPipeline-style rectified-flow Euler sampling (``apply(pipe, policy)`` works on it);
- ``evaluate``: conditioning accuracy of a model (``python -m forecache.core.reference.evaluate``);
- ``plots``: the loss curve and sample grid of the model card;
- ``train_image``: the training script that made ``models/shapes-flux``.

    from forecache.core.reference import load_pipeline
    pipe = load_pipeline()
    images = pipe(["a red circle at the left"], num_inference_steps=28, seed=0)
"""

from __future__ import annotations

from pathlib import Path

from .detector import Detection, conditioning_accuracy, detect
from .model import (
    DEFAULT_PATH,
    REFERENCE_CONFIG,
    build_model,
    load_reference,
    pack_images,
    save_reference,
    unpack_images,
)
from .pipeline import ShapesPipeline, sample
from .shapes import ALL_CONDITIONS, COLOURS, POSITIONS, SHAPES, Condition, make_batch
from .text import ShapesTextEncoder, TextEncoderConfig


def load_pipeline(path: str | Path = DEFAULT_PATH, **kwargs) -> ShapesPipeline:
    """The committed reference model as a pipeline (``load_reference`` kwargs pass through)."""
    model, encoder = load_reference(path, **kwargs)
    return ShapesPipeline(model, encoder)


__all__ = [
    "ALL_CONDITIONS",
    "COLOURS",
    "DEFAULT_PATH",
    "POSITIONS",
    "REFERENCE_CONFIG",
    "SHAPES",
    "Condition",
    "Detection",
    "ShapesPipeline",
    "ShapesTextEncoder",
    "TextEncoderConfig",
    "build_model",
    "conditioning_accuracy",
    "detect",
    "load_pipeline",
    "load_reference",
    "make_batch",
    "pack_images",
    "sample",
    "save_reference",
    "unpack_images",
]
