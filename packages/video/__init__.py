"""forecache.video: caching for video diffusion transformers (Wan, HunyuanVideo, CogVideoX, LTX)
and autoregressive interactive world models. Builds on forecache.core; nothing is implemented here yet."""
