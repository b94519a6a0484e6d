"""LLaDA (arXiv 2502.09992), with or without a feature cache such as dLLM-Cache (arXiv 2506.06295), as the
lm-evaluation-harness model ``forecache-llada`` (EleutherAI lm-eval >= 0.4.9; tested with 0.4.13).

Running it
----------
lm-eval finds a model by name in its own registry, and ``get_model`` imports only ``lm_eval.models``; 0.4.13
has no entry-point group for models. So the plain ``lm_eval``/``lm-eval`` command never sees a model that
another package registers. This module's entry point registers the model, then hands the rest of the
command line to lm-eval's own CLI (``lm_eval.__main__.cli_evaluate``), so every lm-eval option works::

    python -m forecache.dllm.lm_eval_model --model forecache-llada \\
        --model_args pretrained=/models/LLaDA-8B-Instruct,cache=dllm_cache,prompt_interval=50,response_interval=7 \\
        --tasks gsm8k --batch_size 8 --device cuda

From Python, import this module first (importing it registers the model)::

    import lm_eval
    import forecache.dllm.lm_eval_model  # noqa: F401
    results = lm_eval.simple_evaluate(model="forecache-llada", model_args="pretrained=/models/LLaDA-8B-Base",
                                      tasks=["arc_challenge"])

Offline: the model, its tokenizer and this wrapper need no network. lm-eval's tasks fetch their datasets from
the Hugging Face Hub unless the ``datasets`` cache already holds them (set ``HF_DATASETS_OFFLINE=1``), or the
task is a local YAML (``--include_path DIR``) whose ``dataset_path``/``dataset_kwargs`` point at local files.

Model args (``--model_args key=value,...``; defaults in brackets)
------------------------------------------------------------------
``pretrained`` (required): a local folder in the official LLaDA layout (see :mod:`.checkpoint`), with the
tokenizer files unless ``tokenizer=DIR`` names another folder. ``cache`` [none]: a name in
the dllm presets that build a cache policy (``dllm_cache``, ``fast_dllm_cache``: ``forecache presets --domain
dllm``); any other model arg is handed to that preset as a knob, e.g. ``prompt_interval=50,response_interval=7,rho=0.25`` for ``dllm_cache``.
``steps`` [gen_length], ``gen_length`` [each request's ``max_gen_toks``, else 256], ``block_length``
[gen_length: one block], ``temperature`` [0], ``cfg_scale`` [0], ``remasking`` [low_confidence]: the
sampler's (:func:`.sampler.generate`). ``batch_size`` [1]: prompts per ``generate`` call, and Monte-Carlo samples per
forward pass in ``loglikelihood``. ``mc_num`` [128]: Monte-Carlo samples per loglikelihood request.
``is_check_greedy`` [True]: compute the ``is_greedy`` flag of loglikelihood (costs one generation per request;
the LLaDA authors turn it off when no metric reads it). ``dtype`` [auto: the checkpoint's], ``device``
[cuda if available, else cpu], ``max_length`` [config.max_sequence_length], ``seed`` [1234]. The Monte-Carlo
estimator itself is :func:`.likelihood.mc_loglikelihood` (no lm-eval dependency).

A request's ``gen_kwargs`` may set ``until``, ``max_gen_toks`` (the answer length when ``gen_length`` is not a
model arg; rounded up to a multiple of ``block_length``), ``temperature``/``do_sample`` and the diffusion knobs
``steps``, ``gen_length``, ``block_length``, ``cfg_scale``, ``remasking``; other keys (``top_p``, ...) are ignored
with a warning. ``--apply_chat_template`` uses the tokenizer's chat template (LLaDA-8B-Instruct ships one).

Deviations from the official wrapper (GSAI-ML/LLaDA ``eval_llada.py``), each on purpose
-----------------------------------------------------------------------------------
- generation is batched over requests with left padding (the model counts positions per row, so a padded row
  gets exactly its unpadded answer) and honours ``max_gen_toks``/``temperature``; the official wrapper decodes one
  request at a time, greedily, with a fixed ``gen_length``;
- the answer is cut at the first end token (``<|endoftext|>``, ``<|eot_id|>``, the tokenizer's EOS) in token space,
  then where the earliest stop string starts (not at each stop in turn, which misses overlapping stops); special
  tokens are then dropped from the text rather than re-tokenised;
- the Monte-Carlo noise comes from a generator seeded by ``seed`` and the request's text, so a request's estimate
  does not depend on its position in the run; cross-entropy is taken in float32; ``mc_num`` need not be a multiple
  of ``batch_size`` (the last forward pass is smaller);
- a context that does not fit ``max_length`` is cut from the left (the official wrapper asserts);
- one process, no ``accelerate`` data parallelism; no ``loglikelihood_rolling`` (as the official wrapper).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import lm_eval.models  # noqa: F401  get_model() imports the built-in models only while the registry is empty
import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm

from forecache.core.policy import Policy
from forecache.core.presets.registry import UnknownKnobError, build, preset_infos

from .checkpoint import load_llada, load_tokenizer
from .likelihood import masked_counts, mc_loglikelihood
from .sampler import REMASKING, generate, pad_prompts

__all__ = ["LLaDAEvalLM", "main", "masked_counts", "mc_loglikelihood", "resolve_cache"]

logger = logging.getLogger(__name__)

END_TOKENS = ("<|endoftext|>", "<|eot_id|>")  # LLaDA-8B's EOS and the Instruct model's end of turn
DIFFUSION_GEN_KWARGS = ("steps", "gen_length", "block_length", "cfg_scale", "remasking")
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default answer budget (HFLM's max_gen_toks)


def resolve_cache(name: str | None, **knobs: Any) -> Policy | None:
    """The cache policy of the dllm preset ``name`` built with ``knobs``; ``None`` (or ``"none"``): uncached."""
    if name is None or str(name) == "none":
        if knobs:
            raise ValueError(f"unknown model_args {sorted(knobs)}: not a forecache-llada argument (cache=none)")
        return None
    caches = sorted(n for n, info in preset_infos("dllm").items() if info.core_policy)
    if str(name) not in caches:
        raise ValueError(f"unknown cache={name!r}; use one of {caches} (cache=none runs uncached)")
    try:
        return build(str(name), "dllm", **knobs)
    except UnknownKnobError as error:
        raise ValueError(f"unknown model_args {error.knobs}: neither a forecache-llada argument nor a knob of "
                         f"cache={name}; check the spelling") from error


class _GenSettings(NamedTuple):
    """The sampler settings of one request; requests with equal settings share ``generate`` calls."""

    gen_length: int
    block_length: int
    steps: int
    temperature: float
    cfg_scale: float
    remasking: str


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not str(value).lstrip("-").isdigit() or int(value) < 1:
        raise ValueError(f"forecache-llada: {name}={value!r} must be a positive integer")
    return int(value)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def _torch_dtype(dtype: Any) -> torch.dtype | None:
    """``None``/``"auto"`` keep the checkpoint's dtype; otherwise a torch dtype or one of :data:`DTYPES`' names."""
    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return None if dtype == "auto" else dtype
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"forecache-llada: dtype={dtype!r} is not supported; use auto or one of {sorted(DTYPES)}")
    return DTYPES[name]


@register_model("forecache-llada")
class LLaDAEvalLM(LM):
    """lm-eval model: generation with :func:`.sampler.generate` (optionally cached), likelihood by Monte Carlo.

    The model args are listed in this module's docstring.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        tokenizer: str | None = None,
        cache: str | None = None,
        steps: int | None = None,
        gen_length: int | None = None,
        block_length: int | None = None,
        temperature: float = 0.0,
        cfg_scale: float = 0.0,
        remasking: str = "low_confidence",
        batch_size: int | str = 1,
        max_batch_size: int | None = None,  # lm-eval passes it for batch_size=auto, which is not supported
        dtype: str | torch.dtype | None = "auto",
        device: str | None = None,
        mc_num: int = 128,
        is_check_greedy: bool = True,
        max_length: int | None = None,
        seed: int = 1234,
        **cache_knobs: Any,
    ) -> None:
        super().__init__()
        self.cache_name = "none" if cache is None else str(cache)
        self.cache = resolve_cache(cache, **cache_knobs)  # before loading: a typo fails fast
        # every parameter of the method (defaults included) when it is a dataclass, as DllmCache is
        method = None if self.cache is None else self.cache.where.method
        self.cache_params = dataclasses.asdict(method) if dataclasses.is_dataclass(method) else cache_knobs
        if pretrained is None:
            raise ValueError("forecache-llada needs model_args pretrained=PATH, a local LLaDA checkpoint folder")
        self.pretrained = Path(str(pretrained)).expanduser()
        if not (self.pretrained / "config.json").is_file():
            raise ValueError(
                f"forecache-llada: pretrained={pretrained!r} is not a folder with config.json; download the "
                "checkpoint (e.g. `huggingface-cli download GSAI-ML/LLaDA-8B-Instruct --local-dir DIR`) and pass DIR"
            )
        if str(batch_size).startswith("auto"):
            raise ValueError("forecache-llada: batch_size=auto is not supported; pass an integer (--batch_size 8)")
        self.batch_size = _positive_int("batch_size", batch_size)
        self.mc_num = _positive_int("mc_num", mc_num)
        self.steps = None if steps is None else _positive_int("steps", steps)
        self.gen_length = None if gen_length is None else _positive_int("gen_length", gen_length)
        self.block_length = None if block_length is None else _positive_int("block_length", block_length)
        if remasking not in REMASKING:
            raise ValueError(f"forecache-llada: remasking={remasking!r}; use one of {REMASKING}")
        if float(temperature) < 0 or float(cfg_scale) < 0:
            raise ValueError(f"forecache-llada: temperature={temperature} and cfg_scale={cfg_scale} must be >= 0")
        self.temperature, self.cfg_scale, self.remasking = float(temperature), float(cfg_scale), remasking
        self.is_check_greedy, self.seed = bool(is_check_greedy), int(seed)
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_llada(self.pretrained, dtype=_torch_dtype(dtype), device=self._device)
        self.tokenizer = load_tokenizer(Path(str(tokenizer)).expanduser() if tokenizer else self.pretrained)
        config = self.model.config
        self.max_length = config.max_sequence_length if max_length is None else _positive_int("max_length", max_length)
        self.mask_id = config.mask_token_id
        tok = self.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else config.pad_token_id
        vocab = tok.get_vocab()
        self.end_ids = {i for i in (tok.eos_token_id, config.eos_token_id) if i is not None}
        self.end_ids |= {vocab[t] for t in END_TOKENS if t in vocab}
        self._warned: set[str] = set()
        self._cache_rows = 0
        self._cache_compute = 0.0  # sum over generated rows of the cache's compute_fraction

    # ------------------------------------------------------------------ text <-> tokens
    def _encode(self, text: str) -> list[int]:
        """Token ids; no second BOS when the text already starts with one (a chat template writes it)."""
        bos = self.tokenizer.bos_token
        add_special = not (bos and text.startswith(bos))
        return list(self.tokenizer(text, add_special_tokens=add_special)["input_ids"])

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation ids, split as lm-eval does: trailing spaces of the context move to the
        continuation and the continuation is what encoding the whole adds to encoding the context."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole, prefix = self._encode(context + continuation), self._encode(context)
        return prefix, whole[len(prefix) :]

    def _decode_answer(self, ids: list[int], until: Sequence[str]) -> str:
        """The answer text: cut at the first end token, then before the earliest stop string, specials dropped."""
        cut = next((i for i, t in enumerate(ids) if t in self.end_ids), len(ids))
        text = self.tokenizer.decode(ids[:cut], skip_special_tokens=False)
        # earliest start over all stops: splitting at each in turn would miss a stop that starts earlier but
        # ends later than another (lm-eval's HF model and the official wrapper split in turn)
        starts = [i for i in (text.find(stop) for stop in until if stop) if i >= 0]
        text = text[: min(starts)] if starts else text
        for special in self.tokenizer.all_special_tokens:
            text = text.replace(special, "")
        return text

    def _seed_for(self, *texts: str) -> int:
        """A generator seed from ``seed`` and the request's text: the same request draws the same noise anywhere.
        32 bits, because the CPU generator (mt19937) keeps only the low 32 bits of a seed."""
        return zlib.crc32("\x1f".join([str(self.seed), *texts]).encode())

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            logger.warning(message)

    # ------------------------------------------------------------------ generation
    def _settings(self, gen_kwargs: dict[str, Any]) -> tuple[_GenSettings, list[str]]:
        """The sampler settings and stop strings of one request (see the module docstring for the rules)."""
        kwargs = dict(gen_kwargs or {})
        until = kwargs.pop("until", None)
        until = [until] if isinstance(until, str) else list(until or [])
        max_gen_toks = kwargs.pop("max_gen_toks", None)
        do_sample = kwargs.pop("do_sample", None)
        temperature = kwargs.pop("temperature", None)
        knobs = {k: kwargs.pop(k) for k in DIFFUSION_GEN_KWARGS if k in kwargs}
        if kwargs:
            self._warn_once(f"forecache-llada ignores gen_kwargs {sorted(kwargs)} (LLaDA's sampler has no such knob)")
        temperature = self.temperature if temperature is None else float(temperature)
        if do_sample is False:
            temperature = 0.0
        gen_length = knobs.get("gen_length") or self.gen_length or max_gen_toks or DEFAULT_MAX_GEN_TOKS
        block = knobs.get("block_length") or self.block_length or gen_length
        gen_length = math.ceil(int(gen_length) / int(block)) * int(block)
        steps = knobs.get("steps") or self.steps or gen_length
        settings = _GenSettings(gen_length, int(block), int(steps), temperature,
                                float(knobs.get("cfg_scale", self.cfg_scale)), knobs.get("remasking", self.remasking))
        return settings, until

    def _prompt_ids(self, context: str, gen_length: int) -> list[int]:
        ids = self._encode(context)
        room = self.max_length - gen_length
        if room < 1:
            raise ValueError(
                f"forecache-llada: gen_length={gen_length} leaves no room for a prompt in max_length={self.max_length}; "
                "lower gen_length/max_gen_toks"
            )
        if len(ids) > room:
            self._warn_once(f"forecache-llada: prompts longer than {room} tokens are cut from the left")
            ids = ids[-room:]
        if not ids:  # an empty context: condition on one end token, as lm-eval's HF model does
            tok = self.tokenizer
            ids = [next(i for i in (tok.bos_token_id, tok.eos_token_id, self.model.config.eos_token_id) if i is not None)]
        return ids

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Answer each ``(context, gen_kwargs)`` request; the strings come back in request order.

        Requests with the same sampler settings are batched (``batch_size`` prompts, longest first, left padded);
        each row draws its noise from its own generator, so a batched answer equals the answer alone.
        """
        prepared = []
        for request in requests:
            context, gen_kwargs = request.args
            settings, until = self._settings(gen_kwargs)
            prepared.append((context, self._prompt_ids(context, settings.gen_length), settings, until))
        groups: dict[_GenSettings, list[int]] = {}
        for i, item in enumerate(prepared):
            groups.setdefault(item[2], []).append(i)
        answers: list[str] = [""] * len(requests)
        with tqdm(total=len(requests), desc="forecache-llada generate", disable=disable_tqdm or self.rank != 0) as bar:
            for settings, indices in groups.items():
                indices.sort(key=lambda i: -len(prepared[i][1]))  # similar lengths together: less padding
                for start in range(0, len(indices), self.batch_size):
                    chunk = indices[start : start + self.batch_size]
                    texts = self._generate_batch([prepared[i] for i in chunk], settings)
                    for i, text in zip(chunk, texts, strict=True):
                        answers[i] = text
                        self.cache_hook.add_partial("generate_until", requests[i].args, text)
                    bar.update(len(chunk))
        return answers

    def _generate_batch(self, items: list[tuple[str, list[int], _GenSettings, list[str]]],
                        settings: _GenSettings) -> list[str]:
        ids, mask = pad_prompts([item[1] for item in items], self.pad_id)
        generators = [torch.Generator().manual_seed(self._seed_for(item[0])) for item in items]
        out, stats = generate(
            self.model, ids.to(self._device), mask.to(self._device), steps=settings.steps,
            gen_length=settings.gen_length, block_length=settings.block_length, temperature=settings.temperature,
            cfg_scale=settings.cfg_scale, remasking=settings.remasking, mask_id=self.mask_id, cache=self.cache,
            generator=generators, return_stats=True,
        )
        if stats.get("cache") and "compute_fraction" in stats["cache"]:
            self._cache_rows += len(items)
            self._cache_compute += len(items) * float(stats["cache"]["compute_fraction"])
        return [self._decode_answer(row, item[3]) for row, item in zip(out[:, ids.shape[1] :].tolist(), items,
                                                                       strict=True)]

    # ------------------------------------------------------------------ likelihood
    def _is_greedy(self, prefix: list[int], target: list[int]) -> bool:
        """Whether LLaDA's sampler, one token per step over ``len(target)`` masked positions (low-confidence
        remasking, greedy), writes exactly ``target`` after ``prefix``: the official ``suffix_greedy_prediction``."""
        n = len(target)
        x = torch.tensor([prefix], dtype=torch.long, device=self._device).view(1, len(prefix))
        out = generate(self.model, x, steps=n, gen_length=n, block_length=n, temperature=0.0,
                       cfg_scale=self.cfg_scale, remasking="low_confidence", mask_id=self.mask_id, cache=self.cache)
        return out[0, len(prefix) :].tolist() == target

    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """``(log p(continuation | context), is_greedy)`` per request: the Monte-Carlo estimate of
        :func:`mc_loglikelihood` (``mc_num`` samples) and, if ``is_check_greedy``, the greedy-generation check."""
        results = []
        for request in tqdm(requests, desc="forecache-llada loglikelihood", disable=disable_tqdm or self.rank != 0):
            context, continuation = request.args
            prefix, target = self._encode_pair(context, continuation)
            if not target:
                results.append((0.0, True))  # the empty continuation is certain
                continue
            if len(target) > self.max_length:
                raise ValueError(f"forecache-llada: a continuation of {len(target)} tokens exceeds max_length="
                                 f"{self.max_length}")
            if len(prefix) + len(target) > self.max_length:
                self._warn_once(f"forecache-llada: contexts are cut from the left to fit max_length={self.max_length}")
                prefix = prefix[len(prefix) + len(target) - self.max_length :]
            generator = torch.Generator().manual_seed(self._seed_for(context, continuation))
            ll = mc_loglikelihood(self.model, prefix, target, mc_num=self.mc_num, batch_size=self.batch_size,
                                  cfg_scale=self.cfg_scale, mask_id=self.mask_id, generator=generator)
            greedy = self.is_check_greedy and self._is_greedy(prefix, target)
            results.append((ll, greedy))
            self.cache_hook.add_partial("loglikelihood", request.args, (ll, greedy))
        return results

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError(
            "forecache-llada has no loglikelihood_rolling (perplexity tasks such as wikitext): LLaDA gives a "
            "Monte-Carlo bound on a continuation's log-likelihood, not token-by-token rolling scores; the official "
            "LLaDA wrapper does not implement it either. Use loglikelihood or generate_until tasks."
        )

    # ------------------------------------------------------------------ chat templates and reporting
    @property
    def tokenizer_name(self) -> str:
        return str(self.pretrained).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        if not chat_template:
            return None
        if not self.tokenizer.chat_template:
            raise ValueError(f"forecache-llada: the tokenizer in {self.pretrained} has no chat template; run "
                             "without --apply_chat_template or use an Instruct checkpoint's tokenizer")
        return self.tokenizer.chat_template

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        self.chat_template(True)  # a clear error when there is none
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    def get_model_info(self) -> dict[str, Any]:
        """Written into lm-eval's results ``config``: the cache and its average compute fraction."""
        fraction = self._cache_compute / self._cache_rows if self._cache_rows else None
        return {"forecache_cache": self.cache_name, "forecache_cache_params": self.cache_params,
                "forecache_cache_compute_fraction": fraction,
                "model_num_parameters": sum(p.numel() for p in self.model.parameters()),
                "model_dtype": str(next(self.model.parameters()).dtype)}


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m forecache.dllm.lm_eval_model ARGS``: lm-eval's own CLI, with ``forecache-llada`` registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
