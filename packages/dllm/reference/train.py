"""Train the reference diffusion LM (a tiny LLaDA) on the synthetic tasks by masked diffusion.

    python -m forecache.dllm.reference.train --out models/llada-tasks --minutes 30

Recipe: LLaDA's supervised fine-tuning objective (Nie et al., arXiv 2502.09992, eq. 5). Each example
is a prompt and a response of ``--gen-length`` tokens (the answer, then ``<eos>`` to the end). Per
row a masking ratio t ~ U(0, 1) (floored at ``EPS``) masks each response token with probability t;
the prompt stays clean; the loss is the cross-entropy on the masked tokens weighted by 1/t, summed
and divided by the response length. Batches hold one task each (so long retrieval prompts are not
padded against short ones), drawn with ``--mix`` weights; prompts are left-padded as the sampler pads
them. A retrieval batch holds a number of pairs drawn uniformly from ``--kv-pairs``: short contexts
pack many examples into a batch, which teaches the look-up far sooner than 64-pair contexts alone,
and the long ones teach it at the length it is evaluated at. A share ``--drill`` of retrieval batches
are drills (:func:`~.tasks.kv_drill`): the response is a dozen look-ups written out and only their
values are masked, twelve supervised look-ups per context where an SFT example has one; the rest
are SFT examples, which teach the answer format (value, then ``<eos>``). ``--kv-keys`` with ``--kv-advance``
starts the contexts on a small pool of key tokens, which is what lets a fresh model find the key match
at all (models/llada-tasks/CARD.md). AdamW, linear warm-up then
cosine decay to 10%, until ``--steps`` or ``--minutes``; ``--init`` continues from a saved checkpoint.

Writes to ``--out`` the official LLaDA layout (``config.json``, ``model.safetensors``) and
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
from forecache.core.lr_schedule import warmup_cosine
from tqdm.auto import tqdm

from ..checkpoint import load_llada, save_llada
from ..config import LLaDAConfig
from ..model import LLaDAModel
from .evaluate import GEN_LENGTH, evaluate
from .tasks import TASKS, Example, drill_values, example, kv_drill
from .vocab import EOS_ID, IDS, KEYS, MASK_ID, PAD_ID, TOKENS, save_tokenizer

EPS = 1e-3

#: the reference model's architecture (LLaMA-style LLaDA blocks; about 0.9M parameters): small enough to
#: train on two CPU cores within an hour
REFERENCE_CONFIG = {
    "d_model": 128, "n_heads": 4, "n_kv_heads": 4, "n_layers": 4, "mlp_hidden_size": 384,
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
    p.add_argument("--kv-pairs", type=int, nargs=2, default=[4, 64], metavar=("MIN", "MAX"),
                   help="pairs per retrieval context, drawn per batch (evaluation uses 64)")
    p.add_argument("--kv-ramp", type=float, default=0.0,
                   help="grow the largest context from MIN to MAX pairs over this share of the run (0: no ramp)")
    p.add_argument("--kv-advance", type=float, default=None, metavar="LOSS",
                   help="adaptive curriculum instead of --kv-ramp: the largest context starts at MIN pairs and "
                        "grows by a quarter each time the mean drill loss at that size falls below LOSS")
    p.add_argument("--kv-keys", type=int, default=len(KEYS), metavar="N",
                   help="with --kv-advance: the contexts draw their keys from the first N key tokens at first, and "
                        "the pool grows by half (up to all of them) each time the drills are learnt, before the "
                        "contexts grow; a small pool is what lets a fresh model find the key match (CARD.md)")
    p.add_argument("--drill", type=float, default=0.6, help="share of retrieval batches that are drills")
    p.add_argument("--drill-mask", choices=("random", "all"), default="random",
                   help="drills mask their values at the row's ratio t (random, the SFT rule) or all of them; "
                        "'all' leaves no value visible to answer another by elimination")
    p.add_argument("--save-minutes", type=float, default=10.0, help="save a checkpoint to --out this often")
    p.add_argument("--init", default=None, metavar="FOLDER",
                   help="continue from a checkpoint this script saved (its weights and its log); "
                        "a fresh optimizer and schedule; give another --seed for fresh data")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--gen-length", type=int, default=GEN_LENGTH)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-examples", type=int, default=100)
    return p.parse_args(argv)


def encode(examples: list[Example], gen_length: int | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Left-padded ``[prompt][answer <eos>...]`` rows, their attention mask, and the padded prompt length.

    ``gen_length=None`` keeps the answers as they are, with no ``<eos>`` (they must be equally long)."""
    prompts = [[IDS[w] for w in ex.prompt.split()] for ex in examples]
    answers = [[IDS[w] for w in ex.answer.split()] for ex in examples]
    if gen_length is None:
        gen_length = len(answers[0])
        if any(len(a) != gen_length for a in answers):
            raise ValueError("encode(gen_length=None) needs answers of one length")
    elif any(len(a) >= gen_length for a in answers):
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
             generator: torch.Generator, maskable: torch.Tensor | None = None, mask_all: bool = False) -> torch.Tensor:
    """LLaDA's SFT loss on the response positions (everything after ``prompt_length``).

    ``maskable`` (bool, the response's shape): only these response tokens may be masked and scored, the
    rest stay visible (drills); the loss is divided by their count, the response length by default.
    ``mask_all``: t = 1 for every row (every maskable token masked), the mean cross-entropy over them."""
    response = ids[:, prompt_length:]
    eligible = torch.ones_like(response, dtype=torch.bool) if maskable is None else maskable
    t = (torch.ones(ids.shape[0], 1) if mask_all
         else torch.rand(ids.shape[0], 1, generator=generator) * (1 - EPS) + EPS)
    masked = (torch.rand(response.shape, generator=generator) < t) & eligible
    noisy = ids.clone()
    noisy[:, prompt_length:] = torch.where(masked, torch.full_like(response, MASK_ID), response)
    positions = torch.arange(prompt_length, ids.shape[1]).expand(ids.shape[0], -1)
    logits = model(noisy, attention_mask, logits_at=positions).float()
    ce = F.cross_entropy(logits.transpose(1, 2), response, reduction="none")
    return ((ce * masked / t).sum(1) / eligible.sum(1)).mean()


def batch(task: str, rng: random.Random, args: argparse.Namespace, high: int, keys: int = len(KEYS)):
    """One training batch of ``task``: ``(ids, attention_mask, prompt_length, maskable or None, name, pairs)``.

    ``high``, ``keys``: the largest retrieval context now and the key tokens it draws from (the
    curriculum's; see :class:`Curriculum`)."""
    drill = task == "kv" and rng.random() < args.drill
    pairs = min(rng.randint(args.kv_pairs[0], high), keys) if task == "kv" else None
    kwargs = {"pairs": pairs, "keys": keys} if task == "kv" else {}
    make = (lambda: kv_drill(rng, **kwargs)) if drill else (lambda: example(task, rng, **kwargs))
    probe = make()
    length = len(probe.prompt.split()) + (len(probe.answer.split()) if drill else args.gen_length)
    exs = [probe] + [make() for _ in range(max(1, args.batch_tokens // length) - 1)]
    ids, mask, width = encode(exs, None if drill else args.gen_length)
    maskable = torch.tensor([drill_values(ex.answer) for ex in exs]) if drill else None
    return ids, mask, width, maskable, "kv-drill" if drill else task, pairs


class Curriculum:
    """The largest retrieval context (pairs) of each batch, and how many key tokens it draws from.

    ``--kv-ramp`` grows the context linearly with the share of the run done. ``--kv-advance LOSS`` grows
    it only when the model has learnt the current stage, judged by the mean loss of the last ``window``
    drills drawn near the top (within a quarter of it) falling below LOSS: first the key pool, by half
    each time, from ``--kv-keys`` up to every key; then the context, by a quarter (at least one pair).
    Retrieval over many pairs is out of reach until it works over few; a fixed ramp outran it (CARD.md)."""

    def __init__(self, args: argparse.Namespace, window: int = 40) -> None:
        self.low, self.top = args.kv_pairs
        self.ramp, self.advance, self.window = args.kv_ramp, args.kv_advance, window
        self.high = self.low if (self.ramp > 0 or self.advance) else self.top
        if args.kv_keys != len(KEYS) and not self.advance:
            raise ValueError(f"--kv-keys {args.kv_keys} grows only with the adaptive curriculum; add --kv-advance LOSS")
        self.keys = args.kv_keys
        if not self.low <= self.keys <= len(KEYS):
            raise ValueError(f"--kv-keys {args.kv_keys}: use {self.low} (the smallest context) to {len(KEYS)} keys")
        self.recent: list[float] = []

    def update(self, progress: float, task: str, pairs: int | None, loss: float) -> None:
        if self.advance is None:
            if self.ramp > 0:
                self.high = self.low + round((self.top - self.low) * min(1.0, progress / self.ramp))
            return
        if task != "kv-drill" or pairs is None or pairs < self.high - self.high // 4:
            return
        self.recent = [*self.recent, loss][-self.window:]
        if len(self.recent) < self.window or sum(self.recent) / self.window >= self.advance:
            return
        if self.keys < len(KEYS):
            self.keys = min(len(KEYS), self.keys + max(1, self.keys // 2))
        elif self.high < self.top:
            self.high = min(self.top, max(self.high + 1, round(self.high * 1.25)))
        self.recent = []


def train(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng, gen = random.Random(args.seed), torch.Generator().manual_seed(args.seed)
    earlier: dict = {"log": [], "stages": []}
    if args.init:
        model = load_llada(args.init, dtype=torch.float32).train()
        if (Path(args.init) / "train_log.json").is_file():
            earlier = json.loads((Path(args.init) / "train_log.json").read_text())
    else:
        model = LLaDAModel(LLaDAConfig.from_dict(REFERENCE_CONFIG)).train()
    first, offset = len(earlier["log"]), earlier["log"][-1]["seconds"] if earlier["log"] else 0.0
    stages = [*earlier.get("stages", []), {"first_step": first, **_recipe(args)}]
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.95))
    log: list[dict] = []
    start = time.time()
    deadline = start + 60 * args.minutes if args.minutes else math.inf
    # a time-limited run plans its cosine over the steps it is expected to reach
    total = args.steps
    bar = tqdm(range(args.steps), desc="train", unit="step")
    out, saved = Path(args.out), start
    curriculum = Curriculum(args)
    for step in bar:
        if time.time() > deadline:
            break
        progress = max(step / max(1, total), (time.time() - start) / (deadline - start))
        task = rng.choices(TASKS, weights=args.mix)[0]
        ids, mask, width, maskable, task, pairs = batch(task, rng, args, curriculum.high, curriculum.keys)
        if args.minutes and step == 20:
            total = min(args.steps, int(20 * 60 * args.minutes / (time.time() - start)))
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(step, total, args.lr, args.warmup)
        loss = sft_loss(model, ids, mask, width, gen, maskable, mask_all=task == "kv-drill" and args.drill_mask == "all")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        value = loss.item()
        entry = {"step": first + step, "task": task, "loss": value, "seconds": offset + time.time() - start}
        log.append(entry if pairs is None else {**entry, "pairs": pairs, "keys": curriculum.keys})
        curriculum.update(progress, task, pairs, value)
        if step % args.log_every == 0:
            bar.set_postfix(loss=f"{value:.3f}", task=task, pairs=curriculum.high, keys=curriculum.keys)
        if time.time() > saved + 60 * args.save_minutes:
            _save(model, out, {"stages": stages, "log": earlier["log"] + log})
            saved = time.time()
    log = earlier["log"] + log
    _save(model.eval(), out, {"stages": stages, "log": log})
    minutes = log[-1]["seconds"] / 60 if log else 0.0
    accuracy = evaluate(load_llada(out, dtype=torch.float32), n=args.eval_examples, progress=True)
    summary = {"steps": len(log), "minutes": round(minutes, 1), "final_loss": _tail_mean(log),
               "accuracy": accuracy, "recipe": stages[-1],
               "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}}
    (out / "train_log.json").write_text(json.dumps({"summary": summary, "stages": stages, "log": log}))
    _loss_plot(log, out / "loss.png")
    print(json.dumps(summary, indent=1))
    return summary


def _recipe(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k != "out"}


def _save(model: LLaDAModel, out: Path, log: dict) -> None:
    """The weights (float32: at 0.9M parameters they fit in 4 MB, and bf16 would round what the evaluation
    measured), the tokenizer, and the log so far (so a stopped run can go on with ``--init``)."""
    out.mkdir(parents=True, exist_ok=True)
    save_llada(model, out)
    save_tokenizer(out)
    (out / "train_log.json").write_text(json.dumps(log))


def _tail_mean(log: list[dict], n: int = 200) -> dict[str, float]:
    tail = log[-n:]
    return {task: round(sum(e["loss"] for e in tail if e["task"] == task) / c, 4)
            for task in (*TASKS, "kv-drill") if (c := sum(e["task"] == task for e in tail))}


def _loss_plot(log: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for task in (*TASKS, "kv-drill"):
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
