"""AB-Cache forecasting on a molecule flow model: the same noise sampled uncached and with two caches.

    python examples/molecule_cache.py                      # the reference model, models/molecule-flow
    python examples/molecule_cache.py /path/to/model 64    # another MoleculeEGNN folder, 64 molecules

Samples molecules from the same initial noise three times: 100 Euler steps uncached; 100 steps under
``ab_forecast()`` (a real network evaluation every 3 steps, Adams-Bashforth forecasts of the whole output
in between: AB-Cache's setting); and 199 steps under ``ab_forecast(interval=6, order=4, points=7,
warmup=1)``, the same 34 network evaluations on a grid twice as fine, the forecasts a least-squares fit
(the setting that keeps the reference model's quality, ``packages/science/ADAPTER.md``). Prints each
cache's stats, the fidelity of each cached sample to the uncached one, and the chemistry of all three.
Without a trained model it falls back to a random one (the chemistry is then meaningless, the caching
still works). About a minute for the default 32 molecules on one CPU thread (25 s of it uncached).
"""

import json
import sys
import time
from pathlib import Path

import torch
from forecache.science.adapter import cache_model
from forecache.science.evaluate import evaluate_molecules
from forecache.science.fidelity import fidelity
from forecache.science.model import MoleculeEGNN
from forecache.science.molecule import uncollate
from forecache.science.presets import ab_forecast
from forecache.science.sampler import sample
from forecache.science.sizes import atom_mask, draw_sizes, load_sizes

torch.set_num_threads(1)
path = Path(sys.argv[1] if len(sys.argv) > 1 else "models/molecule-flow")
count = int(sys.argv[2]) if len(sys.argv) > 2 else 32
if (path / "model.safetensors").is_file():
    model, histogram = MoleculeEGNN.load(path), load_sizes(path)
else:
    print(f"no trained model at {path} (train one: python -m forecache.science.train --out {path}); "
          "using a RANDOM MoleculeEGNN: the chemistry below is meaningless, the caching is not")
    torch.manual_seed(0)
    model, histogram = MoleculeEGNN().eval(), {n: 1 for n in range(12, 21)}

sizes = sorted(draw_sizes(histogram, count, torch.Generator().manual_seed(0)))
mask = atom_mask(sizes)


def run(steps=100, handle=None):
    start = time.perf_counter()
    out = sample(model, mask, steps=steps, generator=torch.Generator().manual_seed(1), handle=handle)
    return uncollate(out.batch), time.perf_counter() - start


run()  # warm-up
reference, t_ref = run()
print(f"{count} molecules of {min(sizes)}-{max(sizes)} atoms; uncached, 100 Euler steps: {t_ref:.1f} s")
keys = ("validity", "atom_stability", "molecule_stability", "uniqueness", "mmff_energy_median", "strain_median")


def chemistry(molecules):
    result = evaluate_molecules(molecules, posebusters=False)
    return {k: (round(result[k], 3) if isinstance(result[k], float) else result[k]) for k in keys}


print("uncached", chemistry(reference))
for name, steps, policy in (
    ("ab_forecast(), 100 steps", 100, ab_forecast()),
    ("ab_forecast(6, 4, points=7, warmup=1), 199 steps", 199, ab_forecast(6, 4, points=7, warmup=1)),
):
    # count_flops=False: FLOP counting (one slow instrumented call) would be timed too; stats() then shows
    # the hit rate, and the compute ratio as NaN (`forecache bench science` counts FLOPs separately)
    handle = cache_model(model, policy, count_flops=False)
    cached, seconds = run(steps, handle)
    stats = handle.stats()
    handle.remove()
    print(f"\n{name}: {seconds:.1f} s ({t_ref / seconds:.2f}x wall), "
          f"{(1 - stats.hit_rate) * steps:.1f} network evaluations per molecule")
    print(stats)
    print("fidelity to the uncached sample:", json.dumps(fidelity(cached, reference), indent=1))
    print(name, chemistry(cached))
