"""forecache.three_d: score-distillation 3D generation (Hash3D view/timestep hashing of guidance
model features). Builds on forecache.core; nothing is implemented here yet."""
