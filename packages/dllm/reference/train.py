"""Train the reference diffusion LM (a tiny LLaDA) on the synthetic tasks by masked diffusion.

    python -m forecache.dllm.reference.train --out models/llada-tasks --minutes 30

Recipe: LLaDA's supervised fine-tuning objective (Nie et al., arXiv 2502.09992, eq. 5). Each example
is a prompt and a response of ``--gen-length`` tokens (the answer, then ``<eos>`` to the end). Per
row a masking ratio t ~ U(0, 1) (floored at ``EPS``) masks each response token with probability t;
the prompt stays clean; the loss is the cross-entropy on the masked tokens weighted by 1/t, summed
and divided by the response length. Batches hold one task each (so long retrieval prompts are not
padded against short ones), drawn with ``--mix`` weights; prompts are left-padded as the sampler pads
them. AdamW, linear warm-up then cosine decay to 10%, until ``--steps`` or ``--minutes``.

Writes to ``--out`` the official LLaDA layout (``config.json``, ``model.safetensors`` in bf16) and
the tokenizer, plus ``train_log.json`` and ``loss.png``; then measures each task's accuracy with the
uncached sampler on held-out examples, on the saved weights.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..checkpoint import load_llada, save_llada
from ..config import LLaDAConfig
from ..model import LLaDAModel
from .evaluate import GEN_LENGTH, evaluate
from .tasks import TASKS, Example, example
from .vocab import EOS_ID, IDS, MASK_ID, PAD_ID, TOKENS, save_tokenizer

EPS = 1e-3

#: the reference model's architecture (LLaMA-style LLaDA blocks; about 2.7M parameters)
REFERENCE_CONFIG = {
    "d_model": 192, "n_heads": 6, "n_kv_heads": 6, "n_layers": 6, "mlp_hidden_size": 512,
    "vocab_size": len(TOKENS), "embedding_size": len(TOKENS), "max_sequence_length": 512, "rope_theta": 10000.0,
    "mask_token_id": MASK_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="models/llada-tasks")
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--minutes", type=float, default=None)
    p.add_argument("--batch-tokens", type=int, default=6000, help="tokens per batch (rows = this / row length)")
    p.add_argument("--mix", type=float, nargs=4, default=[0.4, 0.2, 0.2, 0.2], metavar=TASKS,
                   help="how often each task's batch is drawn")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--gen-length", type=int, default=GEN_LENGTH)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-examples", type=int, default=100)
    return p.parse_args(argv)


def encode(examples: list[Example], gen_length: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Left-padded ``[prompt][answer <eos>...]`` rows, their attention mask, and the padded prompt length."""
    prompts = [[IDS[w] for w in ex.prompt.split()] for ex in examples]
    answers = [[IDS[w] for w in ex.answer.split()] for ex in examples]
    if any(len(a) >= gen_length for a in answers):
        raise ValueError(f"an answer needs more than gen_length={gen_length} - 1 tokens; raise --gen-length")
    width = max(map(len, prompts))
    ids = torch.full((len(examples), width + gen_length), PAD_ID, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, (p, a) in enumerate(zip(prompts, answers)):
        ids[row, width - len(p):width] = torch.tensor(p)
        ids[row, width:] = torch.tensor(a + [EOS_ID] * (gen_length - len(a)))
        mask[row, width - len(p):] = 1
    return ids, mask, width


def sft_loss(model: LLaDAModel, ids: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int,
             generator: torch.Generator) -> torch.Tensor:
    """LLaDA's SFT loss on the response positions (everything after ``prompt_length``)."""
    response = ids[:, prompt_length:]
    t = torch.rand(ids.shape[0], 1, generator=generator) * (1 - EPS) + EPS
    masked = torch.rand(response.shape, generator=generator) < t
    noisy = ids.clone()
    noisy[:, prompt_length:] = torch.where(masked, torch.full_like(response, MASK_ID), response)
    positions = torch.arange(prompt_length, ids.shape[1]).expand(ids.shape[0], -1)
    logits = model(noisy, attention_mask, logits_at=positions).float()
    ce = F.cross_entropy(logits.transpose(1, 2), response, reduction="none")
    return ((ce * masked / t).sum(1) / response.shape[1]).mean()


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng, gen = random.Random(args.seed), torch.Generator().manual_seed(args.seed)
    model = LLaDAModel(LLaDAConfig.from_dict(REFERENCE_CONFIG)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.95))
    log: list[dict] = []
    start = time.time()
    deadline = start + 60 * args.minutes if args.minutes else math.inf
    # a time-limited run plans its cosine over the steps it is expected to reach
    total = args.steps
    bar = tqdm(range(args.steps), desc="train", unit="step")
    for step in bar:
        if time.time() > deadline:
            break
        task = rng.choices(TASKS, weights=args.mix)[0]
        probe = example(task, rng)
        rows = max(1, args.batch_tokens // (len(probe.prompt.split()) + args.gen_length))
        ids, mask, width = encode([probe] + [example(task, rng) for _ in range(rows - 1)], args.gen_length)
        if args.minutes and step == 20:
            total = min(args.steps, int(20 * 60 * args.minutes / (time.time() - start)))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, args.lr, args.warmup)
        loss = sft_loss(model, ids, mask, width, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        log.append({"step": step, "task": task, "loss": float(loss), "seconds": time.time() - start})
        if step % args.log_every == 0:
            bar.set_postfix(loss=f"{float(loss):.3f}", task=task)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_llada(model.eval().to(torch.bfloat16), out)
    save_tokenizer(out)
    minutes = (time.time() - start) / 60
    accuracy = evaluate(load_llada(out, dtype=torch.float32), n=args.eval_examples, progress=True)
    summary = {"steps": len(log), "minutes": round(minutes, 1), "final_loss": _tail_mean(log),
               "accuracy": accuracy, "recipe": {k: v for k, v in vars(args).items() if k != "out"},
               "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}}
    (out / "train_log.json").write_text(json.dumps({"summary": summary, "log": log}))
    _loss_plot(log, out / "loss.png")
    print(json.dumps(summary, indent=1))
    return summary


def _tail_mean(log: list[dict], n: int = 200) -> dict[str, float]:
    tail = log[-n:]
    return {task: round(sum(e["loss"] for e in tail if e["task"] == task) / c, 4)
            for task in TASKS if (c := sum(e["task"] == task for e in tail))}


def _loss_plot(log: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for task in TASKS:
        pts = [(e["step"], e["loss"]) for e in log if e["task"] == task]
        if pts:
            ax.plot(*zip(*pts), lw=0.6, label=task)
    ax.set(xlabel="step", ylabel="SFT loss", yscale="log", title="llada-tasks training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    train(parse_args())
