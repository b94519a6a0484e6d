"""Native LLaDA: config, forward pass against an independent reference, block pieces, checkpoints, tokenizer."""

from __future__ import annotations

import json
import math

import pytest
import torch
from forecache.dllm import (
    LLaDABlock,
    LLaDAConfig,
    LLaDAModel,
    load_llada,
    load_tokenizer,
    save_llada,
)
from safetensors.torch import load_file, save_file

from .tiny import run_layers

# LLaDA-8B-Instruct's config.json as published on Hugging Face (GSAI-ML/LLaDA-8B-Instruct).
LLADA_8B_CONFIG = {
    "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
    "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
    "auto_map": {
        "AutoConfig": "configuration_llada.LLaDAConfig",
        "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
        "AutoModel": "modeling_llada.LLaDAModelLM",
    },
    "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": 4096,
    "embedding_dropout": 0.0, "embedding_size": 126464, "eos_token_id": 126081, "flash_attention": False,
    "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta",
    "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
    "layer_norm_with_affine": True, "mask_token_id": 126336, "max_sequence_length": 4096,
    "mlp_hidden_size": 12288, "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None,
    "n_heads": 32, "n_kv_heads": 32, "n_layers": 32, "pad_token_id": 126081, "precision": "amp_bf16",
    "residual_dropout": 0.0, "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True,
    "rope_theta": 500000.0, "scale_logits": False, "transformers_version": "4.46.3", "use_cache": False,
    "vocab_size": 126464, "weight_tying": False,
}

BLOCK_PARAMS = ("attn_norm", "ff_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")


def tiny_config(**overrides) -> LLaDAConfig:
    kw = {
        "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "n_layers": 2, "mlp_hidden_size": 96, "vocab_size": 100,
        "embedding_size": 128, "mask_token_id": 99, "max_sequence_length": 64, "rope_theta": 10000.0,
    }
    return LLaDAConfig(**(kw | overrides))


def tiny_model(seed: int = 0, **overrides) -> LLaDAModel:
    torch.manual_seed(seed)
    model = LLaDAModel(tiny_config(**overrides)).eval()
    with torch.no_grad():  # norms start at ones and biases at zero; make every parameter matter
        for name, p in model.named_parameters():
            if "norm" in name or "ln_f" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))
    return model


def reference_logits(model: LLaDAModel, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """LLaDA written out row by row and head by head in float64, sharing no code with the package."""
    cfg = model.config
    sd = {k: v.double() for k, v in model.state_dict().items()}
    n_h, n_kv, hd, d = cfg.n_heads, cfg.effective_n_kv_heads, cfg.d_model // cfg.n_heads, cfg.d_model

    def lin(x, name):
        y = x @ sd[name + ".weight"].T
        return y + sd[name + ".bias"] if name + ".bias" in sd else y

    def rms(x, name):
        y = x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.rms_norm_eps) * sd[name + ".weight"]
        return y + sd[name + ".bias"] if name + ".bias" in sd else y

    def rotate(t, pos):  # pairs (j, j + hd/2) turn by pos * theta^(-2j/hd)
        half = hd // 2
        angle = pos[:, None] * cfg.rope_theta ** (-2.0 * torch.arange(half, dtype=torch.float64) / hd)
        c, s = angle.cos()[:, None, :], angle.sin()[:, None, :]
        a, b = t[..., :half], t[..., half:]
        return torch.cat([a * c - b * s, b * c + a * s], dim=-1)

    rows = []
    for r in range(ids.shape[0]):
        m = torch.ones(ids.shape[1]) if mask is None else mask[r].double()
        pos = (torch.cumsum(m, 0) - 1).clamp(min=0)
        length = ids.shape[1]
        x = sd["wte.weight"][ids[r]]
        for i in range(cfg.n_layers):
            p = f"blocks.{i}."
            h = rms(x, p + "attn_norm")
            q = rotate(lin(h, p + "q_proj").view(length, n_h, hd), pos)
            k = rotate(lin(h, p + "k_proj").view(length, n_kv, hd), pos)
            v = lin(h, p + "v_proj").view(length, n_kv, hd)
            heads = []
            for j in range(n_h):
                g = j // (n_h // n_kv)
                scores = torch.einsum("qd,kd->qk", q[:, j], k[:, g]) / math.sqrt(hd)
                scores = scores.masked_fill(m[None, :] == 0, float("-inf"))
                heads.append(torch.softmax(scores, -1) @ v[:, g])
            x = x + lin(torch.cat(heads, -1), p + "attn_out")
            h = rms(x, p + "ff_norm")
            gate = lin(h, p + "ff_proj")
            x = x + lin(gate * torch.sigmoid(gate) * lin(h, p + "up_proj"), p + "ff_out")
        x = rms(x, "ln_f")
        rows.append(x @ sd["wte.weight"].T if cfg.weight_tying else lin(x, "ff_out"))
    assert d == x.shape[-1]
    return torch.stack(rows)


# ---------------------------------------------------------------- config


def test_config_defaults_are_llada_8b_and_round_trip(tmp_path):
    cfg = LLaDAConfig.from_dict(LLADA_8B_CONFIG)
    assert cfg.to_dict() == LLADA_8B_CONFIG  # unknown keys survive in `extra`
    default = LLaDAConfig()
    assert {k: v for k, v in cfg.to_dict().items() if k not in cfg.extra} == default.to_dict()
    assert (cfg.head_dim, cfg.effective_n_kv_heads, cfg.ffn_hidden_size, cfg.num_embeddings) == (128, 32, 12288, 126464)
    (tmp_path / "config.json").write_text(json.dumps(LLADA_8B_CONFIG))
    LLaDAConfig.from_json(tmp_path).to_json(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == LLADA_8B_CONFIG


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"d_model": 66}, "divisible by n_heads"),
        ({"n_kv_heads": 3}, "n_kv_heads dividing n_heads"),
        ({"mask_token_id": 100}, "mask_token_id=100"),
        ({"activation_type": "gelu"}, "activation_type='silu'"),
        ({"block_type": "sequential"}, "block_type='llama'"),
        ({"layer_norm_type": "default"}, "layer_norm_type='rms'"),
        ({"embedding_size": 64}, "embedding_size >= vocab_size"),
        ({"d_model": 60, "n_heads": 4, "n_kv_heads": 4}, "even for RoPE"),
    ],
)
def test_bad_config_raises(overrides, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        tiny_config(**overrides)


def test_non_llada_config_raises():
    with pytest.raises(ValueError, match="not a LLaDA config"):
        LLaDAConfig.from_dict({"hidden_size": 4096, "num_attention_heads": 32, "model_type": "llama"})


# ---------------------------------------------------------------- forward


@pytest.mark.parametrize(
    "overrides",
    [{}, {"n_kv_heads": 4, "include_bias": True, "bias_for_layer_norm": True, "weight_tying": True}],
    ids=["gqa", "mha-bias-tied"],
)
def test_forward_matches_reference(overrides):
    model = tiny_model(1, **overrides)
    torch.manual_seed(2)
    ids = torch.randint(0, 100, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, :4] = 0  # a left-padded row
    mask[2, :1] = 0
    with torch.no_grad():
        for m in (None, mask):
            got = model(ids, m)
            assert got.shape == (3, 9, 128) and got.dtype == torch.float32
            torch.testing.assert_close(got.double(), reference_logits(model, ids, m), atol=1e-5, rtol=1e-6)


def test_rope_tables():
    model = tiny_model()
    pos = torch.tensor([[0, 1, 5], [2, 2, 0]])
    cos, sin = model.rope(pos)
    assert cos.shape == sin.shape == (2, 3, 16) and cos.dtype == torch.float32
    assert torch.equal(cos[..., :8], cos[..., 8:]) and torch.equal(cos[0, 0], torch.ones(16))
    assert torch.allclose(sin[0, 2, 1], torch.tensor(math.sin(5 * 10000.0 ** (-2 / 16))))


def test_block_is_its_pieces_and_rows_are_independent():
    model = tiny_model(3)
    block: LLaDABlock = model.blocks[1]
    torch.manual_seed(4)
    x = torch.randn(2, 10, 64)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, :3] = 0
    cos, sin = model.rope(model.positions(mask, mask))
    key_mask = mask.bool()[:, None, None, :]
    with torch.no_grad():
        full = block(x, cos, sin, key_mask)
        h = block.attn_norm(x)
        q, k = block.project_qk(h, cos, sin)
        v = block.project_v(h)
        assert q.shape == (2, 4, 10, 16) and k.shape == v.shape == (2, 2, 10, 16)
        y = x + block.attend(q, k, v, key_mask)
        assert torch.equal(full, y + block.ffn(y))
        # dLLM-Cache's premise: queries for a subset of tokens, with keys/values of all tokens, give those
        # tokens' rows of the full block.
        idx = torch.tensor([1, 4, 5, 9])
        q_sub, _ = block.project_qk(h[:, idx], cos[:, idx], sin[:, idx])
        y_sub = x[:, idx] + block.attend(q_sub, k, v, key_mask)
        part = y_sub + block.ffn(y_sub)
    torch.testing.assert_close(part, full[:, idx], atol=1e-6, rtol=0)


def test_left_padded_row_equals_row_alone():
    model = tiny_model(5)
    torch.manual_seed(6)
    alone = torch.randint(0, 100, (1, 6))
    other = torch.randint(0, 100, (1, 9))
    ids = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), alone], 1), other])
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :3] = 0
    with torch.no_grad():
        batched = model(ids, mask)
        single = model(alone)
        single_other = model(other)
    torch.testing.assert_close(batched[0, 3:], single[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(batched[1], single_other[0], atol=1e-6, rtol=0)
    # Bit-identity: observed on CPU float32 (torch 2.14, 1 thread) for these shapes, but not promised and not
    # asserted: the padded row's softmax runs over 9 keys (3 of weight exactly 0) and the matmuls see other
    # shapes, so another kernel (multithreaded GEMM, GPU flash / memory-efficient attention) may round
    # differently by a few ulps.


def test_logits_at_gathers_rows():
    model = tiny_model(7)
    torch.manual_seed(8)
    ids = torch.randint(0, 100, (2, 12))
    at = torch.tensor([[0, 5, 11], [3, 3, 7]])
    with torch.no_grad():
        full = model(ids)
        some = model(ids, logits_at=at)
    assert some.shape == (2, 3, 128)
    assert torch.equal(some, full.gather(1, at[..., None].expand(-1, -1, 128)))


def test_runner_runs_each_layer_and_its_output_is_used():
    model = tiny_model(9)
    ids = torch.randint(0, 100, (2, 5))
    calls = []

    def runner(i, block, x, cos, sin, key_mask):
        calls.append((i, block))
        assert key_mask.dtype == torch.bool and key_mask.shape == (2, 1, 1, 5) and cos.shape == (2, 5, 16)
        return block(x, cos, sin, key_mask)

    def skip(i, block, x, cos, sin, key_mask):
        return x

    with torch.no_grad():
        assert torch.equal(run_layers(model, runner, ids), model(ids))
        assert [i for i, _ in calls] == [0, 1] and all(b is model.blocks[i] for i, b in calls)
        assert torch.equal(run_layers(model, skip, ids), model.head(model.wte(ids)))


def test_forward_input_errors():
    model = tiny_model()
    ids = torch.randint(0, 100, (2, 5))
    with pytest.raises(ValueError, match="all zeros"):
        model(ids, torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="differs from input_ids"):
        model(ids, torch.ones(2, 4))


# ---------------------------------------------------------------- checkpoints


def official_keys(cfg: LLaDAConfig) -> set[str]:
    keys = {"model.transformer.wte.weight", "model.transformer.ln_f.weight", "model.transformer.ff_out.weight"}
    keys |= {f"model.transformer.blocks.{i}.{n}.weight" for i in range(cfg.n_layers) for n in BLOCK_PARAMS}
    return keys


@pytest.mark.parametrize("max_shard_bytes", [None, 20_000])
def test_save_load_round_trip(tmp_path, max_shard_bytes):
    model = tiny_model(10)
    save_llada(model, tmp_path, max_shard_bytes=max_shard_bytes)
    if max_shard_bytes is None:
        assert set(load_file(tmp_path / "model.safetensors")) == official_keys(model.config)
    else:
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        shards = sorted(set(index["weight_map"].values()))
        assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
        keys = set()
        for name in shards:
            tensors = load_file(tmp_path / name)
            keys |= set(tensors)
            assert sum(t.numel() * t.element_size() for t in tensors.values()) <= max_shard_bytes or len(tensors) == 1
        assert keys == set(index["weight_map"]) == official_keys(model.config)
    loaded = load_llada(tmp_path)
    assert loaded.config == model.config and not loaded.training
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    ids = torch.randint(0, 100, (2, 7))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    half = load_llada(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        assert half(ids).dtype == torch.bfloat16


def test_tied_model_has_no_output_head(tmp_path):
    model = tiny_model(11, weight_tying=True)
    save_llada(model, tmp_path)
    assert set(load_file(tmp_path / "model.safetensors")) == official_keys(model.config) - {
        "model.transformer.ff_out.weight"
    }
    ids = torch.randint(0, 100, (1, 4))
    with torch.no_grad():
        assert torch.equal(load_llada(tmp_path)(ids), model(ids))


def test_checkpoint_errors(tmp_path):
    save_llada(tiny_model(12), tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    dropped = dict(tensors)
    del dropped["model.transformer.blocks.1.up_proj.weight"]
    save_file(dropped, path)
    with pytest.raises(ValueError, match=r"missing .*blocks\.1\.up_proj\.weight"):
        load_llada(tmp_path)
    save_file({**tensors, "model.transformer.blocks.0.rotary.inv_freq": torch.zeros(8)}, path)
    with pytest.raises(ValueError, match=r"unexpected .*rotary\.inv_freq"):
        load_llada(tmp_path)
    save_file(tensors, path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "mlp_hidden_size": 80}))
    with pytest.raises(ValueError, match="does not match config.json|do not match config.json"):
        load_llada(tmp_path)
    path.unlink()
    with pytest.raises(ValueError, match="neither model.safetensors"):
        load_llada(tmp_path)


# ---------------------------------------------------------------- tokenizer


def test_load_tokenizer(tmp_path):
    with pytest.raises(ValueError, match="no tokenizer files"):
        load_tokenizer(tmp_path)
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<|endoftext|>": 1, "<|mdm_mask|>": 2, "hello": 3, "world": 4}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<|endoftext|>", mask_token="<|mdm_mask|>"
    ).save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert tok("hello world again")["input_ids"] == [3, 4, 0]
    assert (tok.mask_token_id, tok.pad_token_id) == (2, 1)
