"""Task accuracy of a diffusion LM on the synthetic tasks, through the LLaDA sampler.

    python -m forecache.dllm.reference.evaluate models/llada-tasks --examples 100
"""

from __future__ import annotations

import argparse
import json

import torch
from tqdm.auto import tqdm

from ..sampler import generate, pad_prompts
from .tasks import TASKS, Example, examples, is_correct
from .vocab import IDS, PAD_ID, TOKENS

#: response length, block length and steps the reference model is trained and evaluated at
GEN_LENGTH = 16
BLOCK_LENGTH = 8
STEPS = 16
#: evaluation examples come from seeds the training stream never uses
EVAL_SEED = 1_000_003


def answer_tokens(model, batch: list[Example], cache=None, steps: int = STEPS, block_length: int = BLOCK_LENGTH,
                  gen_length: int = GEN_LENGTH, return_stats: bool = False):
    """The generated response ids (B, gen_length) for a batch of examples, greedy (temperature 0)."""
    ids, mask = pad_prompts([[IDS[w] for w in ex.prompt.split()] for ex in batch], PAD_ID)
    out = generate(model, ids, mask, steps=steps, gen_length=gen_length, block_length=block_length,
                   cache=cache, return_stats=return_stats)
    tokens, stats = out if return_stats else (out, None)
    response = tokens[:, ids.shape[1]:]
    return (response, stats) if return_stats else response


def decode(ids: torch.Tensor) -> list[str]:
    return [" ".join(TOKENS[i] for i in row.tolist()) for row in ids]


@torch.no_grad()
def evaluate(model, n: int = 100, tasks: tuple[str, ...] = TASKS, batch: int = 25, progress: bool = False,
             cache=None) -> dict[str, float]:
    """Accuracy (exact answer before the first ``<eos>``) of ``n`` held-out examples per task."""
    model.eval()
    scores = {}
    for task in tqdm(tasks, desc="evaluate", disable=not progress):
        exs = examples(task, n, EVAL_SEED)
        right = 0
        for i in range(0, n, batch):
            part = exs[i:i + batch]
            right += sum(is_correct(ex, text) for ex, text in zip(part, decode(answer_tokens(model, part, cache))))
        scores[task] = right / n
    return scores


def main(argv: list[str] | None = None) -> None:
    from ..checkpoint import load_llada

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("path")
    p.add_argument("--examples", type=int, default=100)
    args = p.parse_args(argv)
    print(json.dumps(evaluate(load_llada(args.path, dtype=torch.float32), args.examples, progress=True), indent=1))


if __name__ == "__main__":
    main()
