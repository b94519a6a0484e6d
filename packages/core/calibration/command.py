"""``forecache calibrate``: calibrate a preset on your model from the command line.

    forecache calibrate --model my_setup:flux --method teacache --target-ratio 0.5 --steps 28 \\
        --out flux-teacache.json

``--model MODULE:FUNCTION`` names a function (in an importable module, or a ``path/to/file.py``)
that builds what to calibrate and returns ``(target, generate, fidelity)``:

- ``target``: what ``forecache.core.apply`` takes (a pipeline or its denoiser);
- ``generate``: a callable that runs one generation on fixed inputs (prompt, seed) and returns its
  output, or a list of such callables (a few prompts);
- ``fidelity``: ``fidelity(output, reference) -> float``, higher is better, or ``None``
  (``--target-fidelity`` then uses PSNR, :func:`forecache.core.calibration.psnr`).

A fourth element, when present, is the adapter to pass to ``apply``. With ``--steps N`` the
function is called as ``FUNCTION(steps=N)``, so the generations run N steps. For example::

    def flux(steps=28):
        pipe = FluxPipeline.from_pretrained("black-forest-labs/FLUX.1-dev", torch_dtype=torch.bfloat16).to("cuda")
        def generate():
            return pipe("a red square", num_inference_steps=steps, output_type="pt",
                        generator=torch.Generator("cuda").manual_seed(0)).images
        return pipe, generate, None

``teacache`` and ``magcache`` record one uncached run per generation and fit (TeaCache's
polynomial, MagCache's ratios); with ``--target-ratio`` or ``--target-fidelity`` any preset with a
strength knob has it searched. ``--profile old.json --steps 50`` keeps an earlier fit and searches
the knob again at 50 steps. Use the result with ``teacache(profile="flux-teacache.json")``.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``calibrate`` subcommand on the ``forecache`` parser."""
    p = sub.add_parser(
        "calibrate",
        help="fit a preset to your model (TeaCache polynomial, MagCache ratios, any threshold) and save a profile",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, metavar="MODULE:FUNCTION",
                   help="function returning (target, generate, fidelity[, adapter]); MODULE may be a .py path")
    p.add_argument("--method", required=True, help="preset to calibrate, e.g. teacache, magcache, fbcache, fora")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-ratio", type=float, help="compute ratio to reach, e.g. 0.5 (2x fewer FLOPs)")
    target.add_argument("--target-fidelity", type=float, help="fidelity to keep (PSNR in dB unless FUNCTION gives one)")
    p.add_argument("--steps", type=int, help="passed to FUNCTION(steps=...): the step count to calibrate at")
    p.add_argument("--out", required=True, help="where to write the profile JSON")
    p.add_argument("--profile", help="an earlier profile of this method: keep its fit, search the knob again")
    p.add_argument("--degree", type=int, default=4, help="TeaCache polynomial degree (default 4, as TeaCache)")
    p.add_argument("--max-generations", type=int, default=16, help="generation budget of the search (default 16)")
    p.add_argument("--tolerance", type=float, default=0.02, help="compute-ratio tolerance (default 0.02)")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="another preset argument during the search, e.g. --option retention=0.2 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .calibrate import calibrate
    from .fidelity import psnr
    from .search import SearchConfig

    task = _load_task(args.model, args.steps)
    target, generate, fidelity = task[:3]
    adapter = task[3] if len(task) > 3 else None
    if args.target_fidelity is not None and fidelity is None:
        fidelity = psnr
    profile = calibrate(
        target, generate, args.method,
        target_ratio=args.target_ratio, target_fidelity=args.target_fidelity, fidelity=fidelity,
        adapter=adapter, options=_options(args.option), degree=args.degree, profile=args.profile,
        search=SearchConfig(max_generations=args.max_generations, tolerance=args.tolerance),
        progress=not args.quiet,
    )
    path = profile.save(args.out)
    print(f"{profile!r} -> {path}")
    search = profile.data.get("search")
    if search:
        achieved = search["achieved"]
        fid = achieved.get("fidelity")
        print(f"{search['knob']}={search['value']:.6g} at {search['steps']} steps: compute ratio "
              f"{achieved['compute_ratio']:.3f}" + ("" if fid is None else f", fidelity {fid:.4g}")
              + ("" if search["met"] else f" (target {search['target']} NOT met)"))
    print(f"use it: forecache.core.{args.method}(profile={str(path)!r})")
    return 0 if not search or search["met"] else 1


def _load_task(spec: str, steps: int | None) -> tuple:
    module_name, sep, func_name = spec.rpartition(":")
    if not sep or not module_name or not func_name:
        raise SystemExit(f"--model {spec!r}: use MODULE:FUNCTION, e.g. my_setup:flux or path/to/setup.py:flux")
    if module_name.endswith(".py") or "/" in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise SystemExit(f"--model {spec!r}: no file {path}")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules.setdefault(path.stem, module)
        module_spec.loader.exec_module(module)
    else:
        if str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
        module = importlib.import_module(module_name)
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise SystemExit(f"--model {spec!r}: {module_name} has no function {func_name}")
    if steps is not None:
        if "steps" not in inspect.signature(fn).parameters:
            raise SystemExit(f"--steps was given but {func_name}() takes no `steps` argument; add one "
                             f"(def {func_name}(steps=28): ...) or leave --steps out")
        task = fn(steps=steps)
    else:
        task = fn()
    if not isinstance(task, tuple) or len(task) not in (3, 4):
        raise SystemExit(f"{func_name}() must return (target, generate, fidelity) or (target, generate, "
                         f"fidelity, adapter); got {type(task).__name__}")
    return task


def _options(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--option {pair!r}: use NAME=VALUE, e.g. retention=0.2")
        try:
            out[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[name] = value
    return out
