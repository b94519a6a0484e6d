"""Tiny diffusers models with random weights, for wiring tests.

Every builder seeds torch, builds the real diffusers class from a config a few hundred times smaller
than the published one, and returns it in eval mode on the CPU. ``tiny_inputs(model)`` returns the
keyword arguments of one forward call shaped the way the model's own pipeline calls it. Nothing is
downloaded: the Flux pipeline's tokenizers are built from an in-memory vocabulary.

The weights are random, so outputs mean nothing; use these to check that hooks, adapters and caches
are wired right, never to judge quality.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

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


def _build(cls, seed: int, **config) -> nn.Module:
    torch.manual_seed(seed)
    return cls(**config).eval()


def tiny_flux(seed: int = 0, **overrides: Any) -> nn.Module:
    """FluxTransformer2DModel: 2 dual-stream + 2 single-stream blocks, width 32, guidance-distilled
    (``guidance_embeds=True``, as FLUX.1-dev)."""
    from diffusers import FluxTransformer2DModel

    config = dict(
        patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
    return _build(FluxTransformer2DModel, seed, **{**config, **overrides})


def tiny_sd3(seed: int = 0, **overrides: Any) -> nn.Module:
    """SD3Transformer2DModel: 2 joint blocks; block 0 uses SD3.5's dual attention, block 1 is the
    ``context_pre_only`` last block that returns ``None`` for the text stream."""
    from diffusers import SD3Transformer2DModel

    config = dict(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=16,
        pos_embed_max_size=8, dual_attention_layers=(0,), qk_norm="rms_norm",
    )
    return _build(SD3Transformer2DModel, seed, **{**config, **overrides})


def tiny_wan(seed: int = 0, **overrides: Any) -> nn.Module:
    """WanTransformer3DModel: 2 blocks, width 24 (3 axes of rotary need head dim divisible by 6)."""
    from diffusers import WanTransformer3DModel

    config = dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
    )
    return _build(WanTransformer3DModel, seed, **{**config, **overrides})


def tiny_cogvideox(seed: int = 0, **overrides: Any) -> nn.Module:
    """CogVideoXTransformer3DModel: 2 blocks, width 32, with rotary embeddings (as CogVideoX-5b), so the
    unbatched ``image_rotary_emb`` reaches the blocks."""
    from diffusers import CogVideoXTransformer3DModel

    config = dict(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=16, num_layers=2, sample_width=8, sample_height=8, sample_frames=5, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=8, use_rotary_positional_embeddings=True,
    )
    return _build(CogVideoXTransformer3DModel, seed, **{**config, **overrides})


def tiny_hunyuan_video(seed: int = 0, **overrides: Any) -> nn.Module:
    """HunyuanVideoTransformer3DModel: 2 dual-stream + 2 single-stream blocks, width 16. Pass
    ``image_condition_type="token_replace"`` for the image-to-video block variants."""
    from diffusers import HunyuanVideoTransformer3DModel

    config = dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
        num_single_layers=2, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 2, 4),
    )
    return _build(HunyuanVideoTransformer3DModel, seed, **{**config, **overrides})


def tiny_ltx_video(seed: int = 0, **overrides: Any) -> nn.Module:
    """LTXVideoTransformer3DModel: 2 blocks, width 24."""
    from diffusers import LTXVideoTransformer3DModel

    config = dict(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2,
        attention_head_dim=12, cross_attention_dim=24, num_layers=2, caption_channels=16,
    )
    return _build(LTXVideoTransformer3DModel, seed, **{**config, **overrides})


def tiny_qwen_image(seed: int = 0, **overrides: Any) -> nn.Module:
    """QwenImageTransformer2DModel: 2 blocks, width 32. Pass ``zero_cond_t=True`` for the edit variant
    whose blocks receive a timestep embedding with two rows per sample."""
    from diffusers import QwenImageTransformer2DModel

    config = dict(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=(4, 6, 6),
    )
    return _build(QwenImageTransformer2DModel, seed, **{**config, **overrides})


def tiny_unet(seed: int = 0, **overrides: Any) -> nn.Module:
    """UNet2DConditionModel: 2 resolutions (cross-attention down, plain down; plain up, cross-attention up)
    plus the cross-attention mid block."""
    from diffusers import UNet2DConditionModel

    config = dict(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
    )
    return _build(UNet2DConditionModel, seed, **{**config, **overrides})


#: every tiny builder by the diffusers class name it builds
TINY_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "FluxTransformer2DModel": tiny_flux,
    "SD3Transformer2DModel": tiny_sd3,
    "WanTransformer3DModel": tiny_wan,
    "CogVideoXTransformer3DModel": tiny_cogvideox,
    "HunyuanVideoTransformer3DModel": tiny_hunyuan_video,
    "LTXVideoTransformer3DModel": tiny_ltx_video,
    "QwenImageTransformer2DModel": tiny_qwen_image,
    "UNet2DConditionModel": tiny_unet,
}


def tiny_inputs(model: nn.Module, batch: int = 1, seed: int = 0) -> dict[str, Any]:
    """Keyword arguments for one forward call of a tiny model (any of :data:`TINY_BUILDERS`), shaped as the
    model's diffusers pipeline shapes them. Every batch row is drawn independently, so rows differ.
    ``return_dict=False`` is set, so the call returns a tuple."""
    name = type(model).__name__
    make = _INPUTS.get(name)
    if make is None:
        raise ValueError(
            f"tiny_inputs does not know {name}; it builds inputs for {sorted(_INPUTS)}. "
            "Build the kwargs by hand, shaped as that model's pipeline calls it."
        )
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    kwargs = make(model, batch, randn)
    kwargs["return_dict"] = False
    return kwargs


def _sigma(batch: int, value: float = 0.7) -> torch.Tensor:
    return torch.full((batch,), value)


def _flux_inputs(model, batch, randn):
    cfg = model.config
    h = w = 4
    img_ids = torch.zeros(h, w, 3)
    img_ids[..., 1] = torch.arange(h)[:, None]
    img_ids[..., 2] = torch.arange(w)[None, :]
    kwargs = dict(
        hidden_states=randn(batch, h * w, cfg.in_channels),
        encoder_hidden_states=randn(batch, 6, cfg.joint_attention_dim),
        pooled_projections=randn(batch, cfg.pooled_projection_dim),
        timestep=_sigma(batch),  # FluxPipeline passes t / 1000
        img_ids=img_ids.reshape(-1, 3),
        txt_ids=torch.zeros(6, 3),
    )
    if cfg.guidance_embeds:
        kwargs["guidance"] = torch.full((batch,), 3.5)
    return kwargs


def _sd3_inputs(model, batch, randn):
    cfg = model.config
    return dict(
        hidden_states=randn(batch, cfg.in_channels, 8, 8),
        encoder_hidden_states=randn(batch, 6, cfg.joint_attention_dim),
        pooled_projections=randn(batch, cfg.pooled_projection_dim),
        timestep=torch.full((batch,), 700.0),
    )


def _wan_inputs(model, batch, randn):
    cfg = model.config
    return dict(
        hidden_states=randn(batch, cfg.in_channels, 2, 4, 4),
        timestep=torch.full((batch,), 700.0),
        encoder_hidden_states=randn(batch, 6, cfg.text_dim),
    )


def _cogvideox_inputs(model, batch, randn):
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    cfg = model.config
    frames, height, width = 2, 8, 8
    kwargs = dict(
        hidden_states=randn(batch, frames, cfg.in_channels, height, width),
        encoder_hidden_states=randn(batch, cfg.max_text_seq_length, cfg.text_embed_dim),
        timestep=torch.full((batch,), 700, dtype=torch.long),
    )
    if cfg.use_rotary_positional_embeddings:
        grid = (height // cfg.patch_size, width // cfg.patch_size)
        kwargs["image_rotary_emb"] = get_3d_rotary_pos_embed(
            embed_dim=cfg.attention_head_dim, crops_coords=((0, 0), grid), grid_size=grid, temporal_size=frames
        )
    return kwargs


def _hunyuan_inputs(model, batch, randn):
    cfg = model.config
    mask = torch.ones(batch, 6, dtype=torch.long)
    mask[0, 4:] = 0  # a padded prompt, so the attention mask differs between rows
    kwargs = dict(
        hidden_states=randn(batch, cfg.in_channels, 2, 4, 4),
        timestep=torch.full((batch,), 700.0),
        encoder_hidden_states=randn(batch, 6, cfg.text_embed_dim),
        encoder_attention_mask=mask,
        pooled_projections=randn(batch, cfg.pooled_projection_dim),
    )
    if cfg.guidance_embeds:
        kwargs["guidance"] = torch.full((batch,), 6000.0)
    return kwargs


def _ltx_inputs(model, batch, randn):
    cfg = model.config
    frames, height, width = 2, 4, 4
    return dict(
        hidden_states=randn(batch, frames * height * width, cfg.in_channels),
        encoder_hidden_states=randn(batch, 6, cfg.caption_channels),
        timestep=torch.full((batch,), 700.0),
        encoder_attention_mask=torch.ones(batch, 6, dtype=torch.long),
        num_frames=frames,
        height=height,
        width=width,
        rope_interpolation_scale=(8 / 25, 32, 32),  # LTXPipeline: (8 / frame_rate, 32, 32)
    )


def _qwen_inputs(model, batch, randn):
    cfg = model.config
    h = w = 4
    # zero_cond_t models are edit models: the target image's tokens followed by a reference image's
    shapes = [(1, h // 2, w // 2)] * (2 if cfg.zero_cond_t else 1)
    tokens = sum(f * hh * ww for f, hh, ww in shapes)
    return dict(
        hidden_states=randn(batch, tokens, cfg.in_channels),
        encoder_hidden_states=randn(batch, 6, cfg.joint_attention_dim),
        encoder_hidden_states_mask=torch.ones(batch, 6, dtype=torch.long),
        timestep=_sigma(batch),  # QwenImagePipeline passes t / 1000
        img_shapes=[shapes] * batch,
    )


def _unet_inputs(model, batch, randn):
    cfg = model.config
    return dict(
        sample=randn(batch, cfg.in_channels, 8, 8),
        timestep=torch.full((batch,), 700, dtype=torch.long),
        encoder_hidden_states=randn(batch, 6, cfg.cross_attention_dim),
    )


_INPUTS: dict[str, Callable[..., dict[str, Any]]] = {
    "FluxTransformer2DModel": _flux_inputs,
    "SD3Transformer2DModel": _sd3_inputs,
    "WanTransformer3DModel": _wan_inputs,
    "CogVideoXTransformer3DModel": _cogvideox_inputs,
    "HunyuanVideoTransformer3DModel": _hunyuan_inputs,
    "LTXVideoTransformer3DModel": _ltx_inputs,
    "QwenImageTransformer2DModel": _qwen_inputs,
    "UNet2DConditionModel": _unet_inputs,
}


# -- a whole FluxPipeline ------------------------------------------------------------------------------

_WORDS = ("a", "an", "the", "red", "green", "blue", "square", "circle", "cat", "dog", "photo", "of", "on")


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    # byte-level BPE over single characters plus a few whole words; CLIP marks word ends with </w>
    chars = sorted(set("".join(_WORDS)) | set("abcdefghijklmnopqrstuvwxyz0123456789.,!?"))
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges = []
    for word in _WORDS:
        # merge left to right so every listed word becomes one token
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            a, b = pieces[0], pieces[1]
            merges.append((a, b))
            vocab.setdefault(a + b, len(vocab))
            pieces = [a + b] + pieces[2:]
    tok = CLIPTokenizer(vocab=vocab, merges=merges)
    tok.model_max_length = 16
    return tok


def _t5_tokenizer():
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + w, -1.0) for w in _WORDS]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789.,!?"]
    pieces += [("\u2581", -3.0)]
    tok = T5TokenizerFast(vocab=pieces, extra_ids=0)
    tok.model_max_length = 32
    return tok


def tiny_flux_pipeline(seed: int = 0):
    """A real :class:`diffusers.FluxPipeline` from tiny random components: the tiny Flux transformer, a
    one-level AutoencoderKL (so the latent grid equals the image size / 2 after packing), tiny CLIP and T5
    text encoders, offline tokenizers and the Flux flow-matching Euler scheduler.

    ``pipe("a red square", num_inference_steps=20, height=16, width=16, guidance_scale=3.5,
    max_sequence_length=16)`` runs in about a second on a CPU. Height and width must be multiples of 2.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    transformer = tiny_flux(seed)
    tokenizer, tokenizer_2 = _clip_tokenizer(), _t5_tokenizer()

    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=transformer.config.pooled_projection_dim,
            intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
            bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=32,
        )
    ).eval()
    torch.manual_seed(seed + 2)
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2), d_model=transformer.config.joint_attention_dim, d_kv=8, d_ff=37,
            num_layers=2, num_heads=4, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
            decoder_start_token_id=0,
        )
    ).eval()
    torch.manual_seed(seed + 3)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
        latent_channels=transformer.config.in_channels // 4, norm_num_groups=1, sample_size=16,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler()
    pipe = FluxPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
