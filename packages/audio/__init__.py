"""forecache.audio: DiT text-to-speech acceleration (DiTReducio-style temporal and CFG-branch
reuse for F5-TTS). Builds on forecache.core; nothing is implemented here yet."""
