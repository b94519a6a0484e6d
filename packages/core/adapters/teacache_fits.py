"""TeaCache's published rescaling polynomials, one per checkpoint, with where each was published.

TeaCache (Liu et al., "Timestep Embedding Tells: It's Time to Cache for Video Diffusion Model",
arXiv:2411.19108) accumulates the relative L1 change of a timestep-modulated input and maps it through a
polynomial fitted per checkpoint, then skips the model while the sum stays under a threshold. The
coefficients below are copied from the reference implementation, github.com/ali-vilab/TeaCache (commit
7c10efc), highest power first, as ``numpy.poly1d`` takes them. A fit is only valid for the signal it was
fitted on; each adapter's ``modulated_input`` reproduces that signal, and ``signal`` below names it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_REPO = "github.com/ali-vilab/TeaCache"


@dataclass(frozen=True)
class TeaCacheFit:
    """One published TeaCache polynomial.

    ``match`` names config entries that identify the checkpoint among those sharing a model class: ``()``
    fits any config of the class, ``None`` means the checkpoint cannot be told from its config (pick it by
    ``checkpoint`` name).
    """

    checkpoint: str
    coefficients: tuple[float, ...]
    signal: str
    source: str
    match: tuple[tuple[str, Any], ...] | None = ()

    def matches(self, config: Mapping[str, Any]) -> bool:
        if self.match is None:
            return False
        return all(config.get(key) == value for key, value in self.match)


def _fit(checkpoint: str, coefficients, signal: str, path: str, match=()) -> TeaCacheFit:
    return TeaCacheFit(checkpoint, tuple(coefficients), signal, f"{_REPO} {path}", match)


_NORM1 = "first block's norm1(hidden_states, emb=temb)[0]"

FLUX = (
    _fit("FLUX.1-dev", [4.98651651e02, -2.83781631e02, 5.58554382e01, -3.82021401e00, 2.64230861e-01],
         _NORM1, "TeaCache4FLUX/teacache_flux.py, teacache_forward"),
)

HUNYUAN_VIDEO = (
    _fit("HunyuanVideo", [7.33226126e02, -4.01131952e02, 6.75869174e01, -3.14987800e00, 9.61237896e-02],
         "first double block's img_norm1 modulated by img_mod shift/scale (diffusers: norm1(h, emb=temb)[0])",
         "TeaCache4HunyuanVideo/teacache_sample_video.py, teacache_forward"),
)

LTX_VIDEO = (
    _fit("LTX-Video-0.9.1", [2.14700694e01, -1.28016453e01, 2.31279151e00, 7.92487521e-01, 9.69274326e-03],
         "first block's norm1(h) * (1 + scale_msa) + shift_msa",
         "TeaCache4LTX-Video/teacache_ltx.py, teacache_forward"),
)

# The Wan reference offers two signals: the timestep embedding ``e`` and its projection ``e0``
# (``--use_ret_steps``). Only ``e0`` reaches diffusers' blocks (as ``temb``), so only the e0 fits are
# usable here; they were fitted with the first 5 steps always computed (TeaCache's "retention steps").
_WAN_PATH = "TeaCache4Wan2.1/teacache_generate.py, __main__ (use_ret_steps=True)"
_WAN_SIGNAL = "timestep projection e0 (diffusers: the blocks' temb argument); compute the first 5 steps"
WAN = (
    _fit("Wan2.1-T2V-1.3B", [-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02],
         _WAN_SIGNAL, _WAN_PATH, (("num_layers", 30), ("num_attention_heads", 12), ("in_channels", 16))),
    # Wan2.2-T2V-A14B shares this config; the fit was made on Wan2.1, so it is selected for both
    _fit("Wan2.1-T2V-14B", [-3.03318725e05, 4.90537029e04, -2.65530556e03, 5.87365115e01, -3.15583525e-01],
         _WAN_SIGNAL, _WAN_PATH,
         (("num_layers", 40), ("num_attention_heads", 40), ("in_channels", 16), ("image_dim", None))),
    # 480P and 720P image-to-video checkpoints share one config: choose by name
    _fit("Wan2.1-I2V-14B-480P", [2.57151496e05, -3.54229917e04, 1.40286849e03, -1.35890334e01, 1.32517977e-01],
         _WAN_SIGNAL, _WAN_PATH, None),
    _fit("Wan2.1-I2V-14B-720P", [8.10705460e03, 2.13393892e03, -3.72934672e02, 1.66203073e01, -4.17769401e-02],
         _WAN_SIGNAL, _WAN_PATH, None),
)

_COG_PATH = "TeaCache4CogVideoX1.5/teacache_sample_video.py, coefficients_dict"
_COG_SIGNAL = "timestep embedding emb (diffusers: the blocks' temb argument)"
COGVIDEOX = (
    _fit("CogVideoX-2b", [-3.10658903e01, 2.54732368e01, -5.92380459e00, 1.75769064e00, -3.61568434e-03],
         _COG_SIGNAL, _COG_PATH, (("num_attention_heads", 30),)),
    # CogVideoX-5b and -5b-I2V share one fit
    _fit("CogVideoX-5b", [-1.53880483e03, 8.43202495e02, -1.34363087e02, 7.97131516e00, -5.23162339e-02],
         _COG_SIGNAL, _COG_PATH, (("num_attention_heads", 48), ("patch_size_t", None))),
    _fit("CogVideoX1.5-5B", [2.50210439e02, -1.65061612e02, 3.57804877e01, -7.81551492e-01, 3.58559703e-02],
         _COG_SIGNAL, _COG_PATH, (("num_attention_heads", 48), ("patch_size_t", 2), ("in_channels", 16))),
    _fit("CogVideoX1.5-5B-I2V", [1.22842302e02, -1.04088754e02, 2.62981677e01, -3.06009921e-01, 3.71213220e-02],
         _COG_SIGNAL, _COG_PATH, (("num_attention_heads", 48), ("patch_size_t", 2), ("in_channels", 32))),
)


def select_fit(fits: tuple[TeaCacheFit, ...], config: Mapping[str, Any]) -> TeaCacheFit | None:
    """The first fit whose ``match`` agrees with ``config``, or ``None``."""
    return next((fit for fit in fits if fit.matches(config)), None)
