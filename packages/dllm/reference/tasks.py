"""Synthetic tasks for the reference diffusion LM, generated in code: prompts long enough for caching
to matter, and answers that are exactly right or wrong.

- ``kv``: key-value retrieval. A context of ``pairs`` entries ``k17 = 4 2 ;`` (distinct keys, two-digit
  values, 5 tokens each), then ``find k17 ->``; the answer is the value, ``4 2``. The default of 64
  pairs makes a 323-token prompt.
- ``add``: multi-digit addition, ``add 4 8 2 1 + 3 9 7 =`` → ``5 2 1 8`` (operands of 1 to 4 digits,
  digits most significant first).
- ``copy`` / ``reverse``: ``copy : q w e r t`` → ``q w e r t``, ``reverse : q w e r t`` → ``t r e w q``
  (3 to 10 letters).

Every answer is followed by ``<eos>`` tokens up to the response length, as LLaDA's instruction data
pads its responses (arXiv 2502.09992, section 2.3); a generation is scored on the tokens before the
first ``<eos>``. Everything is drawn from a seeded ``random.Random``, so a seed gives the same
examples on any machine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .vocab import KEYS, LETTERS

TASKS = ("kv", "add", "copy", "reverse")


@dataclass(frozen=True)
class Example:
    """One prompt and its answer, both as space-separated tokens of :mod:`.vocab`."""

    task: str
    prompt: str
    answer: str


def kv_example(rng: random.Random, pairs: int = 64, keys: int = len(KEYS)) -> Example:
    names, values, context = _kv_context(rng, pairs, keys)
    i = rng.randrange(pairs)
    return Example("kv", f"{context} find {names[i]} ->", values[i])


def _kv_context(rng: random.Random, pairs: int, pool: int) -> tuple[list[str], list[str], str]:
    """``pairs`` distinct keys drawn from the first ``pool`` key tokens, their two-digit values, and the
    context ``k17 = 4 2 ; ...`` listing them."""
    if not 1 <= pool <= len(KEYS):
        raise ValueError(f"kv_example(keys={pool}): draw from 1 to {len(KEYS)} key tokens")
    if not 1 <= pairs <= pool:
        raise ValueError(f"kv_example(pairs={pairs}, keys={pool}): use 1 to {pool} pairs (one per key token)")
    keys = rng.sample(KEYS[:pool], pairs)
    values = [f"{rng.randrange(10)} {rng.randrange(10)}" for _ in keys]
    return keys, values, " ".join(f"{k} = {v} ;" for k, v in zip(keys, values))


def kv_drill(rng: random.Random, pairs: int = 64, queries: int = 12, keys: int = len(KEYS)) -> Example:
    """A training-only retrieval drill: a context as in :func:`kv_example`, and as the answer ``queries``
    look-ups of distinct keys written out, ``find k17 -> 4 2 ; find k03 -> 9 0 ; ...``. Training masks only
    the value tokens (:func:`drill_values`), so one context teaches ``queries`` look-ups instead of one.

    ``keys`` (both here and in :func:`kv_example`): draw the keys from the first ``keys`` key tokens only.
    A training curriculum starts small: over all 100 keys a fresh model stays on the plateau of copying
    some context value, over 10 it learns to match keys, and the matching then carries to all 100."""
    names, values, context = _kv_context(rng, pairs, keys)
    asked = rng.sample(range(pairs), min(queries, pairs))
    return Example("kv-drill", context, " ".join(f"find {names[i]} -> {values[i]} ;" for i in asked))


def drill_values(answer: str) -> list[bool]:
    """Which tokens of a :func:`kv_drill` answer are values (the two after each ``->``)."""
    words = answer.split()
    return [i >= 1 and words[i - 1] == "->" or i >= 2 and words[i - 2] == "->" for i in range(len(words))]


def add_example(rng: random.Random, max_digits: int = 4) -> Example:
    a, b = (rng.randrange(10 ** rng.randint(1, max_digits)) for _ in range(2))
    return Example("add", f"add {_digits(a)} + {_digits(b)} =", _digits(a + b))


def _digits(n: int) -> str:
    """``4821`` -> ``4 8 2 1``: one token per digit, most significant first."""
    return " ".join(str(n))


def copy_example(rng: random.Random, reverse: bool = False, lengths: tuple[int, int] = (3, 10)) -> Example:
    letters = [rng.choice(LETTERS) for _ in range(rng.randint(*lengths))]
    answer = letters[::-1] if reverse else letters
    word = "reverse" if reverse else "copy"
    return Example(word, f"{word} : {' '.join(letters)}", " ".join(answer))


def example(task: str, rng: random.Random, **kwargs) -> Example:
    """One example of ``task`` (one of :data:`TASKS`)."""
    if task == "kv":
        return kv_example(rng, **kwargs)
    if task == "add":
        return add_example(rng, **kwargs)
    if task in ("copy", "reverse"):
        return copy_example(rng, reverse=task == "reverse", **kwargs)
    raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")


def examples(task: str, n: int, seed: int, **kwargs) -> list[Example]:
    """``n`` examples of ``task`` from ``seed``."""
    rng = random.Random(f"{task}:{seed}")
    return [example(task, rng, **kwargs) for _ in range(n)]


def answer_of(generated: str) -> str:
    """The answer a generation gives: its tokens before the first ``<eos>``, whitespace-normalised."""
    return " ".join(generated.split("<eos>")[0].split())


def is_correct(ex: Example, generated: str) -> bool:
    return answer_of(generated) == ex.answer
