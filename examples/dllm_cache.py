"""dLLM-Cache and Fast-dLLM on a LLaDA model: the same prompts uncached and under three cache policies.

    python examples/dllm_cache.py                      # the reference model, models/llada-tasks
    python examples/dllm_cache.py /path/to/LLaDA-8B-Instruct "What is 12 * 7?"

Runs on the CPU in seconds with the reference model (a tiny LLaDA trained on key-value retrieval,
addition and copying); with the 8B checkpoint use a GPU and a chat prompt, nothing else changes.
"""

import sys
import time

import torch

from forecache.dllm import (
    cache_llada, dllm_cache, fast_dllm, fast_dllm_cache, generate, load_llada, load_tokenizer, pad_prompts,
)
from forecache.dllm.reference.tasks import examples

path = sys.argv[1] if len(sys.argv) > 1 else "models/llada-tasks"
device = "cuda" if torch.cuda.is_available() else "cpu"
model = load_llada(path, dtype=torch.bfloat16 if device == "cuda" else torch.float32).to(device)
tokenizer = load_tokenizer(path)
if len(sys.argv) > 2:
    prompts, answers = sys.argv[2:], None
    gen_length, block_length = 64, 32
else:  # four key-value retrievals in 323-token contexts, the task caching is for
    tasks = examples("kv", 4, seed=7)
    prompts, answers = [ex.prompt for ex in tasks], [ex.answer for ex in tasks]
    gen_length, block_length = 16, 8
ids, mask = pad_prompts([tokenizer(p)["input_ids"] for p in prompts], tokenizer.pad_token_id)
ids, mask = ids.to(device), mask.to(device)

runs = {
    "uncached": {},
    "dLLM-Cache (K_p=50, K_r=7, rho=0.25)": {"cache": dllm_cache()},
    "Fast-dLLM (dual cache, threshold 0.9)": fast_dllm(block_length=block_length).generate_kwargs(),
    "Fast-dLLM + dLLM-Cache": {"cache": fast_dllm_cache(), "threshold": 0.9},
}
generate(model, ids, mask, steps=gen_length, gen_length=gen_length, block_length=block_length)  # warm-up
for name, options in runs.items():
    options = {"steps": gen_length, "block_length": block_length, **options}
    start = time.perf_counter()
    tokens, stats = generate(model, ids, mask, gen_length=gen_length, return_stats=True, **options)
    seconds = time.perf_counter() - start
    texts = tokenizer.batch_decode(tokens[:, ids.shape[1]:], skip_special_tokens=True)
    print(f"--- {name}: {stats['model_calls']} model calls, {seconds:.2f} s")
    for i, text in enumerate(texts):
        expected = "" if answers is None else f"   (expected {answers[i]})"
        print(f"  {text.strip()!r}{expected}")

# One handle for many requests (each one generation of it): core's stats and the trace of every decision.
handle = cache_llada(model, dllm_cache())
for _ in range(2):
    generate(model, ids, mask, steps=gen_length, gen_length=gen_length, block_length=block_length, cache=handle)
print(f"--- dLLM-Cache on one handle, two requests: {handle.stats()}")
first = handle.trace()[:2]
print(f"  first decisions: {[(d.site, d.action, d.segment) for d in first]}; handle.trace().to_json() has them all")
handle.remove()
