"""Benchmarks: one protocol for every domain, the runner that measures methods side by side with
the uncached baseline (FLOPs counted, wall time interleaved, fidelity against the same seed),
and the reports."""
