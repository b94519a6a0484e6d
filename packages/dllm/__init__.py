"""forecache.dllm: diffusion language models.

A native LLaDA (arXiv:2502.09992) that loads the official checkpoints without remote code, its sampler
(semi-autoregressive blocks, low-confidence or random remasking, CFG, left-padded batches), and
dLLM-Cache (arXiv:2506.06295), and Fast-dLLM's block-wise KV caches and confidence-threshold parallel
decoding (arXiv:2505.22618). Builds on forecache.core.

    from forecache.dllm import load_llada, load_tokenizer, generate, dllm_cache
    tokens = generate(model, ids, mask, steps=128, gen_length=128, block_length=32, cache=dllm_cache())
"""

from .cache_protocol import CachePolicy, CacheState
from .checkpoint import load_llada, load_tokenizer, save_llada
from .combined import CombinedCache, fast_dllm_cache
from .config import LLaDAConfig
from .dllm_cache import DllmCache, dllm_cache
from .drift_calibration import calibrate_drift
from .fast_dllm import FastDllm, FastDllmCache, fast_dllm
from .model import LayerRunner, LLaDABlock, LLaDAModel
from .prefix_store import PrefixStore, with_prefix
from .sampler import generate, pad_prompts

__all__ = [
    "CachePolicy",
    "CacheState",
    "CombinedCache",
    "DllmCache",
    "FastDllm",
    "FastDllmCache",
    "LLaDABlock",
    "LLaDAConfig",
    "LLaDAModel",
    "LayerRunner",
    "PrefixStore",
    "calibrate_drift",
    "dllm_cache",
    "fast_dllm",
    "fast_dllm_cache",
    "generate",
    "load_llada",
    "load_tokenizer",
    "pad_prompts",
    "save_llada",
    "with_prefix",
]
