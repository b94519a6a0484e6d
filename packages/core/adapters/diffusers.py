"""diffusers models for forecache: a registry from model class to :class:`Adapter`.

:func:`adapter_for` walks the model's class MRO and returns the first registered adapter, so a subclass
inherits its parent's entry; there is no matching on class names. Every built-in entry is one
:class:`DiffusersAdapter` configured by fields; each entry's ``source`` names the diffusers code (0.42)
its block lists, argument names and return orders were read from.

Registering a new model takes a few lines::

    from forecache.core.adapters.base import BlockIO
    from forecache.core.adapters.diffusers import DiffusersAdapter, register

    register(MyDiT, DiffusersAdapter(
        name="my-dit",
        time_unit=1000.0,                             # its timestep at pure noise (1.0 if fed sigma)
        block_attrs=("blocks",),                      # attributes holding the blocks, in call order
        io=BlockIO(state=("hidden_states",),          # what flows block to block
                   returns=None,                      # the block returns a bare tensor
                   unbatched=("rotary_emb",)),        # tensors without a batch dimension
    ))

Built-in entries. ``state`` is what flows block to block (hs = hidden_states, ehs =
encoder_hidden_states), ``returns`` the order the blocks return it in, ``time_unit`` 1.0 when the
model receives sigma in [0, 1] and 1000.0 when it receives t in [0, 1000]:

- FluxTransformer2DModel: transformer_blocks then single_transformer_blocks; state (hs, ehs), returns
  (ehs, hs); unbatched image_rotary_emb; sigma.
- SD3Transformer2DModel: transformer_blocks; state (hs, ehs), returns (ehs, hs), except the last block
  (context_pre_only), which returns (None, hs) and whose state is (hs,); t.
- WanTransformer3DModel: blocks; state hs, returned bare; unbatched rotary_emb; t.
- CogVideoXTransformer3DModel: transformer_blocks; state (hs, ehs), returns (hs, ehs); unbatched
  image_rotary_emb; t.
- HunyuanVideoTransformer3DModel: transformer_blocks then single_transformer_blocks (plain or
  token_replace); state (hs, ehs), returns (hs, ehs); unbatched freqs_cis / image_rotary_emb; t.
- LTXVideoTransformer3DModel: transformer_blocks; state hs, returned bare; its rotary table is per sample,
  so nothing is unbatched; t.
- QwenImageTransformer2DModel: transformer_blocks; state (hs, ehs), returns (ehs, hs); unbatched
  image_rotary_emb; temb stacked twice when zero_cond_t; sigma.
- UNet2DConditionModel: down_blocks, mid_block, up_blocks for the step clock, the batch and the block
  order; hs flows through them, but only the mid block may be passed through; t.

Blocks with unusual conventions use :class:`BlockIO`'s ``dropped``, ``stacked`` and
``passthrough`` fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .base import Adapter, BlockIO
from .diffusers_adapter import DEFAULT_ROLES, DiffusersAdapter, call_arguments
from ..rows import select_rows
from ..triggers.magnitude import FLUX_MAG_PROFILE
from .teacache_fits import COGVIDEOX, FLUX, HUNYUAN_VIDEO, LTX_VIDEO, WAN

__all__ = [
    "DEFAULT_ROLES",
    "DiffusersAdapter",
    "UnknownModelError",
    "adapter_for",
    "call_arguments",
    "register",
    "registered",
    "select_rows",
]

# -- TeaCache signals, each the first block's own computation up to its first attention ----------------


def _adaln_zero_input(block: nn.Module, a: Mapping[str, Any]) -> torch.Tensor | None:
    """``norm1(hidden_states, emb=temb)[0]``: AdaLayerNormZero blocks (Flux, SD3, HunyuanVideo)."""
    norm = getattr(block, "norm1", None)
    if norm is None:  # e.g. a Flux model whose first block is single-stream
        return None
    if a.get("token_replace_emb") is not None:  # HunyuanVideoTokenReplaceTransformerBlock
        return norm(a["hidden_states"], a["temb"], a["token_replace_emb"], a["num_tokens"])[0]
    return norm(a["hidden_states"], emb=a["temb"])[0]


def _ltx_input(block: nn.Module, a: Mapping[str, Any]) -> torch.Tensor:
    """LTXVideoTransformerBlock.forward up to attn1: ``norm1(h) * (1 + scale_msa) + shift_msa``."""
    h, temb = a["hidden_states"], a["temb"]
    table = block.scale_shift_table
    ada = table[None, None].to(temb.device) + temb.reshape(h.size(0), temb.size(1), table.shape[0], -1)
    return block.norm1(h) * (1 + ada[:, :, 1]) + ada[:, :, 0]


def _qwen_input(block: nn.Module, a: Mapping[str, Any]) -> torch.Tensor:
    """QwenImageTransformerBlock.forward up to attn: the image stream's norm1 modulated by img_mod."""
    img_mod1 = block.img_mod(a["temb"]).chunk(2, dim=-1)[0]
    # the block's own _modulate, because with zero_cond_t it picks per-token rows of a 2B-row temb
    return block._modulate(block.img_norm1(a["hidden_states"]), img_mod1, a.get("modulate_index"))[0]


def _temb(block: nn.Module, a: Mapping[str, Any]) -> torch.Tensor:
    """The blocks' ``temb`` argument: the timestep embedding TeaCache uses for Wan (e0) and CogVideoX."""
    return a["temb"]


# -- per-block conventions --------------------------------------------------------------------------------

_DUAL = ("hidden_states", "encoder_hidden_states")
_TEXT_FIRST = ("encoder_hidden_states", "hidden_states")

_SD3_LAST_IO = BlockIO(state=("hidden_states",), returns=_TEXT_FIRST, dropped=("encoder_hidden_states",))


def _sd3_io(attr: str, block: nn.Module, io: BlockIO) -> BlockIO:
    # JointTransformerBlock(context_pre_only=True), the last one, ends the text stream: returns (None, hs)
    return _SD3_LAST_IO if getattr(block, "context_pre_only", False) else io


def _qwen_io(attr: str, block: nn.Module, io: BlockIO) -> BlockIO:
    if not getattr(block, "zero_cond_t", False):
        return io
    # QwenImageTransformer2DModel.forward: timestep = cat([t, 0 * t]), so temb has rows [cond..., zero...]
    return BlockIO(state=io.state, returns=io.returns, unbatched=io.unbatched, stacked=("temb",))


_UNET_RESAMPLING_NOTE = (
    "UNet down and up blocks change resolution and carry skip connections, so one cannot stand in for "
    "another; cache them with the DeepCache site, which reuses the up path as a whole"
)


def _unet_io(attr: str, block: nn.Module, io: BlockIO) -> BlockIO:
    if attr == "mid_block":
        return io
    return BlockIO(passthrough=False, passthrough_note=_UNET_RESAMPLING_NOTE)


# -- the built-in entries ---------------------------------------------------------------------------------

_T = "diffusers/models/transformers/"

FLUX_ADAPTER = DiffusersAdapter(
    name="flux",
    time_unit=1.0,
    block_attrs=("transformer_blocks", "single_transformer_blocks"),
    io=BlockIO(state=_DUAL, returns=_TEXT_FIRST, unbatched=("image_rotary_emb",)),
    modulation=_adaln_zero_input,
    roles=(("attn", ("attn",)), ("mlp", ("ff", "proj_mlp")), ("mlp_context", ("ff_context",))),
    teacache_fits=FLUX,
    magcache_ratios=FLUX_MAG_PROFILE,
    source=_T + "transformer_flux.py: FluxTransformer2DModel.forward, FluxTransformerBlock.forward, "
    "FluxSingleTransformerBlock.forward; FluxPipeline passes timestep=t/1000",
    doc="Dual-stream then single-stream blocks; both take (hidden_states, encoder_hidden_states, temb, "
    "image_rotary_emb, joint_attention_kwargs) and return (encoder_hidden_states, hidden_states). "
    "image_rotary_emb is a (cos, sin) pair of [S, D] tables.",
)

SD3_ADAPTER = DiffusersAdapter(
    name="sd3",
    time_unit=1000.0,
    block_attrs=("transformer_blocks",),
    io=BlockIO(state=_DUAL, returns=_TEXT_FIRST),
    io_for=_sd3_io,
    modulation=_adaln_zero_input,
    # SD3.5's attn2 is a second self-attention on the image stream, not cross-attention
    roles=(("attn", ("attn",)), ("attn_dual", ("attn2",)), ("mlp", ("ff",)), ("mlp_context", ("ff_context",))),
    source=_T + "transformer_sd3.py: SD3Transformer2DModel.forward; diffusers/models/attention.py: "
    "JointTransformerBlock.forward",
    doc="JointTransformerBlock(hidden_states, encoder_hidden_states, temb, joint_attention_kwargs) returns "
    "(encoder_hidden_states, hidden_states); the last block (context_pre_only) returns (None, hidden_states), "
    "so its state is hidden_states alone. No rotary tables.",
)

WAN_ADAPTER = DiffusersAdapter(
    name="wan",
    time_unit=1000.0,
    block_attrs=("blocks",),
    io=BlockIO(state=("hidden_states",), unbatched=("rotary_emb",)),
    modulation=_temb,
    roles=(("attn", ("attn1",)), ("cross_attn", ("attn2",)), ("mlp", ("ffn",))),
    teacache_fits=WAN,
    source=_T + "transformer_wan.py: WanTransformer3DModel.forward, WanTransformerBlock.forward",
    doc="WanTransformerBlock(hidden_states, encoder_hidden_states, temb, rotary_emb), called positionally, "
    "returns hidden_states. temb is the timestep projection [B, 6, D] ([B, S, 6, D] for Wan2.2 TI2V); "
    "rotary_emb is a (cos, sin) pair of [1, S, 1, D] tables.",
)

COGVIDEOX_ADAPTER = DiffusersAdapter(
    name="cogvideox",
    time_unit=1000.0,
    block_attrs=("transformer_blocks",),
    io=BlockIO(state=_DUAL, returns=_DUAL, unbatched=("image_rotary_emb",)),
    modulation=_temb,
    roles=(("attn", ("attn1",)), ("mlp", ("ff",))),
    teacache_fits=COGVIDEOX,
    source=_T + "cogvideox_transformer_3d.py: CogVideoXTransformer3DModel.forward, CogVideoXBlock.forward",
    doc="CogVideoXBlock(hidden_states, encoder_hidden_states, temb, image_rotary_emb, attention_kwargs) returns "
    "(hidden_states, encoder_hidden_states). The pipeline computes image_rotary_emb ([S, D] tables).",
)

HUNYUAN_VIDEO_ADAPTER = DiffusersAdapter(
    name="hunyuan-video",
    time_unit=1000.0,
    block_attrs=("transformer_blocks", "single_transformer_blocks"),
    # the dual blocks name the rotary pair freqs_cis, the single blocks image_rotary_emb
    io=BlockIO(state=_DUAL, returns=_DUAL, unbatched=("image_rotary_emb", "freqs_cis")),
    modulation=_adaln_zero_input,
    roles=(("attn", ("attn",)), ("mlp", ("ff", "proj_mlp")), ("mlp_context", ("ff_context",))),
    teacache_fits=HUNYUAN_VIDEO,
    source=_T + "transformer_hunyuan_video.py: HunyuanVideoTransformer3DModel.forward and the forward of "
    "HunyuanVideo{,TokenReplace}{,Single}TransformerBlock",
    doc="All four block kinds are called positionally with (hidden_states, encoder_hidden_states, temb, "
    "attention_mask, rotary pair, token_replace_emb, first_frame_num_tokens) and return (hidden_states, "
    "encoder_hidden_states); the plain blocks take the last two as *args.",
)

LTX_VIDEO_ADAPTER = DiffusersAdapter(
    name="ltx-video",
    time_unit=1000.0,
    block_attrs=("transformer_blocks",),
    # LTXVideoRotaryPosEmbed builds its (cos, sin) per sample, [B, S, D]: batched, so sliced with the rows
    io=BlockIO(state=("hidden_states",)),
    modulation=_ltx_input,
    roles=(("attn", ("attn1",)), ("cross_attn", ("attn2",)), ("mlp", ("ff",))),
    teacache_fits=LTX_VIDEO,
    source=_T + "transformer_ltx.py: LTXVideoTransformer3DModel.forward, LTXVideoTransformerBlock.forward, "
    "LTXVideoRotaryPosEmbed.forward",
    doc="LTXVideoTransformerBlock(hidden_states, encoder_hidden_states, temb, image_rotary_emb, "
    "encoder_attention_mask) returns hidden_states.",
)

QWEN_IMAGE_ADAPTER = DiffusersAdapter(
    name="qwen-image",
    time_unit=1.0,
    block_attrs=("transformer_blocks",),
    io=BlockIO(state=_DUAL, returns=_TEXT_FIRST, unbatched=("image_rotary_emb",)),
    io_for=_qwen_io,
    modulation=_qwen_input,
    roles=(("attn", ("attn",)), ("mlp", ("img_mlp",)), ("mlp_context", ("txt_mlp",))),
    source=_T + "transformer_qwenimage.py: QwenImageTransformer2DModel.forward, QwenImageTransformerBlock.forward; "
    "QwenImagePipeline passes timestep=t/1000",
    doc="QwenImageTransformerBlock(hidden_states, encoder_hidden_states, encoder_hidden_states_mask, temb, "
    "image_rotary_emb, joint_attention_kwargs, modulate_index) returns (encoder_hidden_states, hidden_states). "
    "image_rotary_emb is a (video, text) pair of complex [S, D] tables. No published TeaCache fit.",
)

UNET_ADAPTER = DiffusersAdapter(
    name="unet-2d-condition",
    time_unit=1000.0,
    block_attrs=("down_blocks", "mid_block", "up_blocks"),
    io=BlockIO(state=("hidden_states",)),
    io_for=_unet_io,
    hidden_arg="sample",
    roles=(),
    source="diffusers/models/unets/unet_2d_condition.py: UNet2DConditionModel.forward; "
    "diffusers/models/unets/unet_2d_blocks.py",
    doc="For the timestep, the batch and the block order only. Down blocks return (hidden_states, "
    "skip tuple), up blocks take res_hidden_states_tuple; hidden_states flows down -> mid -> up, but only "
    "the mid block may be passed through (make_output raises for the others).",
)

_BUILTIN_ENTRIES: tuple[tuple[str, DiffusersAdapter], ...] = (
    ("FluxTransformer2DModel", FLUX_ADAPTER),
    ("SD3Transformer2DModel", SD3_ADAPTER),
    ("WanTransformer3DModel", WAN_ADAPTER),
    ("CogVideoXTransformer3DModel", COGVIDEOX_ADAPTER),
    ("HunyuanVideoTransformer3DModel", HUNYUAN_VIDEO_ADAPTER),
    ("LTXVideoTransformer3DModel", LTX_VIDEO_ADAPTER),
    ("QwenImageTransformer2DModel", QWEN_IMAGE_ADAPTER),
    ("UNet2DConditionModel", UNET_ADAPTER),
)

# -- the registry -------------------------------------------------------------------------------------------

_REGISTRY: dict[type, Adapter] = {}
_builtins_loaded = False
_diffusers_missing = False


class UnknownModelError(LookupError):
    """No adapter is registered for a model's class or any of its bases."""


def _load_builtins() -> None:
    # diffusers is imported on first use, not at import, so forecache.core imports without it
    global _builtins_loaded, _diffusers_missing
    if _builtins_loaded:
        return
    _builtins_loaded = True
    try:
        import diffusers
    except ImportError:
        _diffusers_missing = True
        return
    for class_name, adapter in _BUILTIN_ENTRIES:
        cls = getattr(diffusers, class_name, None)
        if cls is not None:  # older diffusers releases lack some classes
            _REGISTRY.setdefault(cls, adapter)


def register(model_cls: type[nn.Module], adapter: Adapter, *, replace: bool = False) -> None:
    """Use ``adapter`` for ``model_cls`` and its subclasses. Registering a class twice needs
    ``replace=True``."""
    if not isinstance(model_cls, type):
        raise TypeError(f"register() takes the model class, got {model_cls!r}; pass type(model)")
    if not isinstance(adapter, Adapter):
        raise TypeError(f"register() takes an Adapter, got {type(adapter).__name__}; build a DiffusersAdapter")
    _load_builtins()
    existing = _REGISTRY.get(model_cls)
    if existing is not None and existing is not adapter and not replace:
        raise ValueError(
            f"{model_cls.__name__} already has adapter {getattr(existing, 'name', existing)!r}; "
            "pass replace=True to override it"
        )
    _REGISTRY[model_cls] = adapter


def registered() -> dict[type, Adapter]:
    """A copy of the registry: model class -> adapter."""
    _load_builtins()
    return dict(_REGISTRY)


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter registered for ``model``'s class or its nearest registered base class, with TeaCache
    coefficients chosen for its config. Raises :class:`UnknownModelError` when none is registered."""
    _load_builtins()
    for cls in type(model).__mro__:
        adapter = _REGISTRY.get(cls)
        if adapter is not None:
            return adapter.for_model(model) if isinstance(adapter, DiffusersAdapter) else adapter
    raise UnknownModelError(_unknown_message(model))


def _unknown_message(model: Any) -> str:
    name = type(model).__name__
    hint = ""
    for part in ("transformer", "unet"):
        if not isinstance(model, nn.Module) and isinstance(getattr(model, part, None), nn.Module):
            hint = f"\n{name} looks like a pipeline: pass its .{part} instead."
    if _diffusers_missing:
        hint += "\ndiffusers is not installed, so no built-in adapter is registered: pip install 'forecache[core]'."
    known = ", ".join(sorted(c.__name__ for c in _REGISTRY)) or "none"
    return (
        f"forecache has no adapter for {name}.{hint}\nRegistered: {known}.\n"
        "Register one (or pass adapter=... to apply()):\n"
        "    from forecache.core.adapters.base import BlockIO\n"
        "    from forecache.core.adapters.diffusers import DiffusersAdapter, register\n"
        f"    register({name}, DiffusersAdapter(\n"
        '        name="my-model", time_unit=1000.0, block_attrs=("transformer_blocks",),\n'
        '        io=BlockIO(state=("hidden_states",), returns=None, unbatched=("image_rotary_emb",))))'
    )
