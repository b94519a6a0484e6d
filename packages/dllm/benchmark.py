"""The diffusion-LM benchmarks (`forecache bench dllm`), on the reference model ``models/llada-tasks``.

One benchmark per task family of :mod:`forecache.dllm.reference.tasks`, on held-out examples (``EVAL_SEED``,
a seed the training stream never uses), generated greedily at the settings the model is trained and evaluated
at (``GEN_LENGTH`` = 16 answer tokens, ``BLOCK_LENGTH`` = 8, ``STEPS`` = 16: one token per model call):

- ``kv-retrieval`` (the main one): find a key's value in a 64-pair, 323-token context; 50 examples (quick 10).
  The long, fixed prompt is what dLLM-Cache's prompt caching is for.
- ``addition``: multi-digit addition; 100 examples (quick 20).
- ``copy-reverse``: copy and reverse examples, interleaved; 50 of each (quick 10 of each).

Outputs are the generated answer ids, LongTensor ``(N, GEN_LENGTH)``. Fidelity against the uncached answers:
``token_agreement`` (fraction of answer positions equal), ``sequence_agreement`` (fraction of answers equal
at every position) and ``answer_agreement`` (fraction whose answer before the first ``<eos>`` is equal).
Metrics: ``accuracy`` (:func:`~forecache.dllm.reference.tasks.is_correct`), per task too when tasks are
mixed. The unit of work is the generated token (``N * GEN_LENGTH``): the runner adds tokens/s and FLOPs per
token to the baseline and every row.

Methods. The uncached sampler is the baseline. dLLM-Cache (Liu et al., arXiv 2506.06295) is swept over
K_r (``response_interval``) in (2, 4, 8) x rho in (0, 0.25, 0.5) with K_p (``prompt_interval``) = 100
(quick: K_r in (2, 8) x rho in (0, 0.25)), plus the paper default (K_p, K_r, rho) = (50, 7, 0.25), the
reference code's LLaDA-8B-Instruct GSM8K setting. With 16 steps any K_p >= 16 computes the prompt once.
Fast-dLLM (Wu et al., arXiv 2505.22618), at the benchmark's block length 8: the prefix cache and DualCache on
LLaDA's fixed schedule, confidence-threshold parallel decoding alone, and DualCache with the threshold (the
paper's full method), thresholds (0.7, 0.8, 0.9) (quick: 0.9; the paper's is 0.9).

How a method is switched on: a dLLM cache policy is not applied to a module but passed to
``generate(cache=...)``. So the benchmark's target is a :class:`Decoding`, the policy (and any extra
``generate`` options, e.g. a decoding threshold) the next generations use; a method's ``enable`` sets it and
returns an :class:`Enabled`, the undo callable whose ``stats()`` the runner records.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from forecache.core.bench.protocol import Method

from .combined import fast_dllm_cache
from .dllm_cache import DllmCache
from .fast_dllm import FastDllmCache
from .reference.evaluate import BLOCK_LENGTH, EVAL_SEED, GEN_LENGTH, STEPS, decode
from .reference.tasks import Example, answer_of, examples, is_correct
from .reference.vocab import IDS, MASK_ID, PAD_ID, TOKENS
from .sampler import generate, pad_prompts

DEFAULT_PATH = "models/llada-tasks"
#: rows per generate() call, as reference/evaluate.py batches them
BATCH = 25
#: benchmark name -> (tasks, examples per task (quick, full))
BENCHMARKS: dict[str, tuple[tuple[str, ...], tuple[int, int]]] = {
    "kv-retrieval": (("kv",), (10, 50)),
    "addition": (("add",), (20, 100)),
    "copy-reverse": (("copy", "reverse"), (10, 50)),
}
#: dLLM-Cache rows: K_p, and the (K_r, rho) grid (quick, full)
PROMPT_INTERVAL = 100
DLLM_CACHE_GRID: tuple[list[tuple[int, float]], list[tuple[int, float]]] = (
    [(k, rho) for k in (2, 8) for rho in (0.0, 0.25)],
    [(k, rho) for k in (2, 4, 8) for rho in (0.0, 0.25, 0.5)],
)

#: Fast-dLLM confidence thresholds (quick, full)
THRESHOLDS: tuple[tuple[float, ...], tuple[float, ...]] = ((0.9,), (0.7, 0.8, 0.9))


class Decoding:
    """A benchmark's target: the cache policy and extra ``generate()`` options of the next generations.

    Empty (``cache=None``, no options) is the uncached sampler. While a method is on, every ``generate()``
    call's sampler stats are kept in ``calls`` as ``(tokens in the batch, stats)`` for :meth:`Enabled.stats`.
    """

    def __init__(self) -> None:
        self.cache: Any | None = None
        self.options: dict[str, Any] = {}
        self.calls: list[tuple[int, dict]] = []

    @property
    def active(self) -> bool:
        return self.cache is not None or bool(self.options)

    def use(self, cache: Any | None = None, **options: Any) -> Enabled:
        """Decode with ``cache`` and ``options`` until the returned undo is called."""
        if self.active:
            raise ValueError("a dLLM method is already enabled on this benchmark; call the undo its enable returned")
        self.cache, self.options, self.calls = cache, dict(options), []
        return Enabled(self)

    def clear(self) -> None:
        self.cache, self.options = None, {}

    def record(self, tokens: int, stats: dict) -> None:
        if self.active:
            self.calls.append((tokens, stats))


class Enabled:
    """What a dLLM method's ``enable`` returns: call it to go back to uncached decoding (idempotent)."""

    def __init__(self, decoding: Decoding) -> None:
        self.decoding = decoding
        self.undone = False

    def __call__(self) -> None:
        if not self.undone:
            self.decoding.clear()
            self.undone = True

    def stats(self) -> dict[str, Any]:
        """The generations since ``enable``: model calls, the cache's ``*_fraction`` telemetry averaged over
        the batches weighted by their tokens, and the peak cache size (``peak_cache_bytes``)."""
        calls = self.decoding.calls
        out: dict[str, Any] = {"generate_calls": len(calls), "model_calls": sum(s["model_calls"] for _, s in calls)}
        caches = [(w, s["cache"]) for w, s in calls if s.get("cache")]
        if not caches:
            return out
        first, total = caches[0][1], sum(w for w, _ in caches)
        out.update({k: first[k] for k in ("method", "params") if k in first})
        for key in first:
            if key.endswith("_fraction") or key == "compute_ratio":
                out[key] = sum(w * c[key] for w, c in caches) / total
        peaks = [c["peak_cache_bytes"] for _, c in caches if "peak_cache_bytes" in c]
        if peaks:
            out["peak_cache_bytes"] = max(peaks)
        return out


def decoding_method(name: str, params: dict, make: Callable[[], Any] | None = None, note: str = "",
                    **options: Any) -> Method:
    """A benchmark row decoding with the policy ``make()`` builds and the extra ``generate()`` ``options``."""

    def enable(target: Decoding, count_flops: bool = True) -> Enabled:
        # count_flops is the core policies' switch for their own meter; the runner counts dLLM runs itself
        return target.use(make() if make is not None else None, **options)

    return Method(name=name, params=params, enable=enable, note=note)


def dllm_cache_methods(quick: bool) -> list[Method]:
    """dLLM-Cache (arXiv 2506.06295) over the (K_r, rho) grid at K_p = 100, then the paper default."""
    rows = [
        decoding_method("dllm_cache", {"K_p": PROMPT_INTERVAL, "K_r": k, "rho": rho},
                        lambda k=k, rho=rho: DllmCache(PROMPT_INTERVAL, k, rho))
        for k, rho in DLLM_CACHE_GRID[0 if quick else 1]
    ]
    default = DllmCache()
    rows.append(decoding_method(
        "dllm_cache", {"K_p": default.prompt_interval, "K_r": default.response_interval, "rho": default.rho},
        DllmCache, note="paper default: the reference code's LLaDA-8B-Instruct GSM8K setting",
    ))
    return rows


def fast_dllm_methods(quick: bool) -> list[Method]:
    """Fast-dLLM (arXiv 2505.22618): its two KV caches on the fixed schedule, threshold decoding, and both."""
    rows = [
        decoding_method("fast_dllm_prefix_cache", {}, lambda: FastDllmCache(dual=False),
                        note="prefix K/V reused within a block; block and suffix recomputed"),
        decoding_method("fast_dllm_dual_cache", {}, lambda: FastDllmCache(dual=True),
                        note="prefix and suffix K/V reused within a block; the block alone computed"),
    ]
    thresholds = THRESHOLDS[0 if quick else 1]
    rows += [decoding_method("parallel_decoding", {"threshold": t}, threshold=t,
                             note="Fast-dLLM's confidence-threshold commits, no cache") for t in thresholds]
    rows += [decoding_method("fast_dllm", {"cache": "dual", "threshold": t}, lambda: FastDllmCache(dual=True),
                             threshold=t, note="DualCache + threshold decoding, the paper's full method")
             for t in thresholds]
    # Fast-dLLM + dLLM-Cache: the dual cache with dLLM-Cache's long prompt interval
    rows += [decoding_method("fast_dllm_cache", {"K_p": kp, "threshold": t}, lambda kp=kp: fast_dllm_cache(kp),
                             threshold=t, note="dual cache + threshold, prompt recomputed every K_p calls")
             for kp in ((8,) if quick else (4, 8, 16)) for t in thresholds]
    return rows


def load_reference(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The task reference model at ``path`` in float32, checked to speak the tasks' vocabulary."""
    from .checkpoint import load_llada

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"no LLaDA checkpoint at {folder}; train the reference model first: "
            f"python -m forecache.dllm.reference.train --out {folder}"
        )
    model = load_llada(folder, dtype=torch.float32, device=device)
    if model.config.vocab_size < len(TOKENS) or model.config.mask_token_id != MASK_ID:
        raise ValueError(
            f"the model at {folder} does not use the task vocabulary (vocab_size {model.config.vocab_size}, "
            f"mask id {model.config.mask_token_id}; need >= {len(TOKENS)} and {MASK_ID}); point at a model "
            "trained by forecache.dllm.reference.train"
        )
    return model


def _interleave(groups: list[list[Example]]) -> list[Example]:
    """Round-robin over the tasks, so every batch (and a quick run) mixes them."""
    return [ex for row in zip(*groups) for ex in row]


class TaskBenchmark:
    """The reference diffusion LM on held-out examples of ``tasks`` (``sizes`` per task: quick, full)."""

    domain = "dllm"
    unit = "token"

    def __init__(self, name: str, tasks: tuple[str, ...], sizes: tuple[int, int], path: str | Path = DEFAULT_PATH,
                 batch: int = BATCH, device: str | torch.device = "cpu") -> None:
        self.name, self.tasks, self.sizes, self.path = name, tasks, sizes, path
        self.batch, self.device = batch, torch.device(device)
        self.model = str(path)
        self.decoding = Decoding()
        self.llada: torch.nn.Module | None = None
        self.examples: list[Example] = []
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def prepare(self, quick: bool) -> None:
        if self.llada is None:
            self.llada = load_reference(self.path, self.device)
        n = self.sizes[0 if quick else 1]
        self.examples = _interleave([examples(task, n, EVAL_SEED) for task in self.tasks])
        self.batches = []
        for i in range(0, len(self.examples), self.batch):
            prompts = [[IDS[w] for w in ex.prompt.split()] for ex in self.examples[i:i + self.batch]]
            ids, mask = pad_prompts(prompts, PAD_ID)
            self.batches.append((ids.to(self.device), mask.to(self.device)))

    def target(self) -> Decoding:
        return self.decoding

    def denoiser(self) -> torch.nn.Module:
        return self.llada

    def generate(self) -> torch.Tensor:
        """The answer ids ``(N, GEN_LENGTH)`` of every example, greedy, with the target's policy and options."""
        answers = []
        for ids, mask in self.batches:
            tokens, stats = generate(self.llada, ids, mask, steps=STEPS, gen_length=GEN_LENGTH,
                                     block_length=BLOCK_LENGTH, cache=self.decoding.cache, return_stats=True,
                                     **self.decoding.options)
            self.decoding.record(tokens.numel(), stats)
            answers.append(tokens[:, ids.shape[1]:].cpu())
        return torch.cat(answers)

    def units(self, out: torch.Tensor) -> int:
        """Generated tokens: every answer position of every example."""
        return out.numel()

    def fidelity(self, out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
        same = out == ref
        answers = [answer_of(a) == answer_of(b) for a, b in zip(decode(out), decode(ref))]
        return {
            "token_agreement": float(same.double().mean()),
            "sequence_agreement": float(same.all(dim=1).double().mean()),
            "answer_agreement": sum(answers) / len(answers),
        }

    def metrics(self, out: torch.Tensor) -> dict[str, float]:
        right = [is_correct(ex, text) for ex, text in zip(self.examples, decode(out))]
        scores = {"accuracy": sum(right) / len(right)}
        if len(self.tasks) > 1:
            for task in self.tasks:
                mine = [r for r, ex in zip(right, self.examples) if ex.task == task]
                scores[f"accuracy_{task}"] = sum(mine) / len(mine)
        return scores

    def methods(self, quick: bool) -> list[Method]:
        return dllm_cache_methods(quick) + fast_dllm_methods(quick)


def benchmarks(path: str | Path = DEFAULT_PATH) -> list[TaskBenchmark]:
    """Entry point of the `forecache.benchmarks` group for the dllm domain (models load at ``prepare``)."""
    return [TaskBenchmark(name, tasks, sizes, path) for name, (tasks, sizes) in BENCHMARKS.items()]
