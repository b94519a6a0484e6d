"""Load and save LLaDA checkpoints in the official Hugging Face layout, without ``trust_remote_code``.

The layout (as published for GSAI-ML/LLaDA-8B-Instruct, arXiv:2502.09992): ``config.json`` and either
``model.safetensors`` or ``model.safetensors.index.json`` with shards ``model-0000i-of-0000N.safetensors``.
Tensors are named ``model.transformer.<name>`` where ``<name>`` is the parameter name in
:class:`~forecache.dllm.model.LLaDAModel` (``wte.weight``, ``blocks.3.q_proj.weight``, ``ln_f.weight``, ...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .config import LLaDAConfig
from .model import LLaDAModel

PREFIX = "model.transformer."
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Any of these makes a folder loadable by AutoTokenizer (fast tokenizer, its config, or slow vocab files).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _few(names: set[str] | list[str], k: int = 5) -> str:
    names = sorted(names)
    return ", ".join(names[:k]) + (f" (and {len(names) - k} more)" if len(names) > k else "")


def _shard_files(folder: Path) -> list[Path]:
    if (folder / INDEX_FILE).is_file():
        weight_map: dict[str, str] = json.loads((folder / INDEX_FILE).read_text())["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    raise ValueError(f"load_llada: {folder} has neither {SINGLE_FILE} nor {INDEX_FILE}; point at a LLaDA checkpoint folder.")


def load_llada(
    path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device | None = None
) -> LLaDAModel:
    """Build a :class:`LLaDAModel` from a local folder in the official layout; returns it in eval mode.

    Args:
        path: folder with ``config.json`` and the safetensors weights.
        dtype: cast every tensor to this dtype; ``None`` keeps the file's (bfloat16 for LLaDA-8B).
        device: where the weights go; ``None`` is the CPU.

    The model is built on the meta device and each shard is read, checked and assigned in turn, so peak
    memory is the model plus one shard (LLaDA-8B: 16 GB in bfloat16, six shards). Missing, unexpected or
    misshapen tensors raise ``ValueError``.
    """
    folder = Path(path)
    config = LLaDAConfig.from_json(folder / "config.json")
    with torch.device("meta"):
        model = LLaDAModel(config)
    expected = {name: p.shape for name, p in model.state_dict().items()}
    loaded: set[str] = set()
    target = str(torch.device(device)) if device is not None else "cpu"
    for shard in _shard_files(folder):
        if not shard.is_file():
            raise ValueError(f"load_llada: shard {shard.name} named in {INDEX_FILE} is missing from {folder}.")
        tensors = load_file(shard, device=target)
        state: dict[str, torch.Tensor] = {}
        for key, tensor in tensors.items():
            name = key.removeprefix(PREFIX)
            if not key.startswith(PREFIX) or name not in expected:
                state[key] = tensor  # reported below
                continue
            if tensor.shape != expected[name]:
                raise ValueError(
                    f"load_llada: {key} has shape {tuple(tensor.shape)}, config.json implies "
                    f"{tuple(expected[name])}; the weights do not match config.json."
                )
            state[name] = tensor if dtype is None else tensor.to(dtype)
        unexpected = {k for k in state if k not in expected}
        if unexpected:
            raise ValueError(
                f"load_llada: unexpected tensors in {shard.name}: {_few(unexpected)}; this is not a checkpoint "
                "of the architecture config.json describes."
            )
        model.load_state_dict(state, strict=False, assign=True)
        loaded |= state.keys()
        del tensors, state
    missing = set(expected) - loaded
    if missing:
        raise ValueError(
            f"load_llada: tensors missing from {folder}: {_few([PREFIX + m for m in missing])}; "
            "the checkpoint is incomplete or does not match config.json."
        )
    return model.eval()


def save_llada(model: LLaDAModel, path: str | Path, max_shard_bytes: int | None = None) -> None:
    """Write ``model`` in the official layout: ``config.json`` plus one file, or shards and an index.

    ``max_shard_bytes=None`` writes a single ``model.safetensors``; otherwise tensors are packed in
    parameter order into shards of at most that many bytes (a tensor larger than the limit gets its own
    shard), named ``model-0000i-of-0000N.safetensors`` with ``model.safetensors.index.json``.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.to_json(folder / "config.json")
    state = {PREFIX + k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": "pt"}
    if max_shard_bytes is None:
        save_file(state, str(folder / SINGLE_FILE), metadata=metadata)
        return
    if max_shard_bytes <= 0:
        raise ValueError(f"save_llada: max_shard_bytes must be positive, got {max_shard_bytes}.")
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index: dict[str, Any] = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def load_tokenizer(path: str | Path) -> Any:
    """LLaDA's tokenizer from a local folder via ``transformers.AutoTokenizer`` (offline, no remote code).

    LLaDA-8B ships a ``PreTrainedTokenizerFast`` (``tokenizer.json`` + ``tokenizer_config.json``), which
    transformers loads natively.
    """
    folder = Path(path)
    if not folder.is_dir() or not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ValueError(
            f"load_tokenizer: {folder} has no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); copy "
            "tokenizer.json, tokenizer_config.json and special_tokens_map.json from the model's snapshot there."
        )
    # transformers is a heavy import: only when a tokenizer is wanted.
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
