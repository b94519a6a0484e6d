"""The Shapes reference model: data, text encoder, detector, committed weights, sampler, and
forecache.core.apply on its pipeline (bit-identical at TeaCache's never-skip setting)."""

import pytest
import torch

pytest.importorskip("diffusers")

import forecache.core as fc
from forecache.core.adapters.diffusers import adapter_for
from forecache.core.reference import (
    ALL_CONDITIONS,
    Condition,
    ShapesTextEncoder,
    conditioning_accuracy,
    load_pipeline,
    make_batch,
    pack_images,
    unpack_images,
)
from forecache.core.reference.model import resolve

PROMPTS = ["a red circle at the left", "a blue square at the top", "a green triangle at the center",
           "a yellow circle at the bottom"]


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline()


@pytest.fixture(scope="module")
def uncached(pipe):
    """4 prompts, 8 steps, seed 0, and the timesteps the transformer received."""
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(float(kwargs["timestep"][0])), with_kwargs=True
    )
    try:
        images = pipe(PROMPTS, num_inference_steps=8, seed=0)
    finally:
        hook.remove()
    return images, seen


def test_dataset_is_deterministic_and_varied():
    a, ca = make_batch(16, seed=3)
    b, cb = make_batch(16, seed=3)
    c, _ = make_batch(16, seed=4)
    assert torch.equal(a, b) and ca == cb
    assert not torch.equal(a, c)
    assert a.shape == (16, 3, 32, 32) and a.min() >= 0 and a.max() <= 1
    assert Condition.parse(ca[0].description) == ca[0]
    with pytest.raises(ValueError, match="shape="):
        Condition("hexagon", "red", "left")


def test_pack_round_trip():
    images, _ = make_batch(2, seed=0)
    tokens = pack_images(images)
    assert tokens.shape == (2, 256, 12) and tokens.min() >= -1
    assert torch.allclose(unpack_images(tokens), images, atol=1e-6)


def test_detector_reads_ground_truth():
    images, conditions = make_batch(60, seed=1)
    accuracy = conditioning_accuracy(images, conditions)
    assert accuracy["all"] == 1.0, accuracy
    flat = torch.full_like(images[:1], 0.15)
    assert conditioning_accuracy(flat, conditions[:1])["all"] == 0.0  # no foreground: wrong, not a crash


def test_text_encoder_shapes_determinism_and_errors():
    enc = ShapesTextEncoder()
    states, pooled = enc(PROMPTS)
    assert states.shape == (4, 8, 64) and pooled.shape == (4, 64)
    again = ShapesTextEncoder()(PROMPTS)
    assert torch.equal(states, again[0]) and torch.equal(pooled, again[1])
    assert not torch.equal(states[0], states[1])
    null_states, null_pooled = enc("")
    assert not null_states.any() and not null_pooled.any()
    with pytest.raises(ValueError, match="unknown word"):
        enc("a purple circle at the left")


def test_committed_weights_load_into_flux(pipe):
    from diffusers import FluxTransformer2DModel

    assert isinstance(pipe.transformer, FluxTransformer2DModel)
    assert adapter_for(pipe.transformer) is not None
    weights = resolve("models/shapes-flux") / "model.safetensors"
    assert weights.stat().st_size <= 10 * 2**20


def test_sampler_uses_flux_timestep_convention(pipe, uncached):
    images, seen = uncached
    assert images.shape == (4, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    sigmas = pipe.scheduler.sigmas[:-1].tolist()  # the transformer gets t / 1000 = sigma
    assert seen == pytest.approx(sigmas, abs=1e-6) and len(seen) == 8 and seen[0] == pytest.approx(1.0)


def test_apply_on_the_pipeline_is_bit_identical_at_never_skip(pipe, uncached):
    reference = uncached[0]
    handle = fc.apply(pipe, fc.teacache(0.0))
    try:
        cached = pipe(PROMPTS, num_inference_steps=8, seed=0)
        assert handle.stats().calls == 8
    finally:
        handle.remove()
    assert torch.equal(cached, reference)
    assert torch.equal(pipe(PROMPTS, num_inference_steps=8, seed=0), reference)  # removed cleanly


def test_committed_model_follows_its_prompts(pipe):
    conditions = list(ALL_CONDITIONS[::7])  # 9 of the 60, covering every shape, colour and position
    images = pipe([c.description for c in conditions], num_inference_steps=28, seed=0)
    assert conditioning_accuracy(images, conditions)["all"] >= 0.8
