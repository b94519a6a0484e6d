"""forecache.dllm: diffusion language models (native LLaDA, dLLM-Cache, Fast-dLLM style KV caching
and parallel decoding). Builds on forecache.core; nothing is implemented here yet."""
