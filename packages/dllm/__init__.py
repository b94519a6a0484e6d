"""forecache.dllm: diffusion language models.

A native LLaDA (arXiv:2502.09992) that loads the official checkpoints without remote code, its sampler
(semi-autoregressive blocks, low-confidence or random remasking, CFG, left-padded batches), and
dLLM-Cache (arXiv:2506.06295), and Fast-dLLM's block-wise KV caches and confidence-threshold parallel
decoding (arXiv:2505.22618). The caches run on forecache.core's runtime: a preset is a core policy, applied
to the model's layers through :class:`LLaDAAdapter` (``cache_llada``), its decisions in the handle's trace.

    from forecache.dllm import load_llada, load_tokenizer, generate, dllm_cache
    tokens = generate(model, ids, mask, steps=128, gen_length=128, block_length=32, cache=dllm_cache())
"""

from .adapter import LLaDAAdapter, cache_llada
from .checkpoint import load_llada, load_tokenizer, save_llada
from .combined import CombinedCache, fast_dllm_cache
from .config import LLaDAConfig
from .dllm_cache import DllmCache, dllm_cache
from .drift_calibration import calibrate_drift
from .fast_dllm import FastDllm, FastDllmCache, fast_dllm
from .layout import SequenceLayout, sequence_layout
from .model import LLaDABlock, LLaDAModel
from .prefix_store import PrefixStore, with_prefix
from .sampler import generate, pad_prompts
from .site import LayerRunner, LLaDALayers, LLaDASite, llada_policy

__all__ = [
    "CombinedCache",
    "DllmCache",
    "FastDllm",
    "FastDllmCache",
    "LLaDAAdapter",
    "LLaDABlock",
    "LLaDAConfig",
    "LLaDALayers",
    "LLaDAModel",
    "LLaDASite",
    "LayerRunner",
    "PrefixStore",
    "SequenceLayout",
    "cache_llada",
    "calibrate_drift",
    "dllm_cache",
    "fast_dllm",
    "fast_dllm_cache",
    "generate",
    "llada_policy",
    "load_llada",
    "load_tokenizer",
    "pad_prompts",
    "save_llada",
    "sequence_layout",
    "with_prefix",
]
