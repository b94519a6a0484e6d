"""AB-Cache forecasting on a molecule flow model: the same noise sampled uncached and with ab_forecast().

    python examples/molecule_cache.py                      # the reference model, models/molecule-flow
    python examples/molecule_cache.py /path/to/model 64    # another MoleculeEGNN folder, 64 molecules

Samples molecules with 100 Euler steps, once uncached and once under ``ab_forecast()`` (a real network
evaluation every 3 steps, Adams-Bashforth forecasts of the whole output in between), from the same
initial noise; prints the cache's stats, the fidelity of the cached sample to the uncached one, and the
chemistry of both. Without a trained model it falls back to a random one (the chemistry is then
meaningless, the caching still works). About 20 s per 64 molecules uncached on one CPU thread.
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


def run(handle=None):
    start = time.perf_counter()
    out = sample(model, mask, steps=100, generator=torch.Generator().manual_seed(1), handle=handle)
    return uncollate(out.batch), time.perf_counter() - start


run()  # warm-up
reference, t_ref = run()
# count_flops=False: FLOP counting (one slow instrumented call) would be timed too; stats() then shows
# the hit rate, and the compute ratio as NaN (`forecache bench science` counts FLOPs separately)
handle = cache_model(model, ab_forecast(interval=3, order=2), count_flops=False)
cached, t_cached = run(handle)
stats = handle.stats()
handle.remove()

print(f"{count} molecules of {min(sizes)}-{max(sizes)} atoms, 100 Euler steps")
print(f"uncached {t_ref:.1f} s, ab_forecast {t_cached:.1f} s ({t_ref / t_cached:.2f}x wall)")
print(stats)
print("fidelity to the uncached sample:", json.dumps(fidelity(cached, reference), indent=1))
keys = ("validity", "atom_stability", "molecule_stability", "uniqueness", "mmff_energy_median", "strain_median")
for name, molecules in (("uncached", reference), ("ab_forecast", cached)):
    result = evaluate_molecules(molecules, posebusters=False)
    print(name, {k: (round(result[k], 3) if isinstance(result[k], float) else result[k]) for k in keys})
