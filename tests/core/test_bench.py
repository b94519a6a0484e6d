"""The benchmark runner and reports on a toy benchmark."""

import json

import pytest
import torch

import forecache.core as fc
from forecache.core.bench import report, runner
from forecache.core.cli import main
from forecache.core.bench.metrics import psnr, ssim
from forecache.core.bench.protocol import Benchmark, Method, policy_method
from forecache.core.testing.toy import ToyAdapter, ToyTransformer, sample, toy_inputs

STEPS = torch.linspace(1.0, 0.05, 10)


class ToyBench:
    domain, name, model = "toy", "euler", "ToyTransformer(seed 0)"

    def prepare(self, quick):
        torch.manual_seed(0)
        self.model_ = ToyTransformer().eval()
        self.inputs = toy_inputs(batch=1 if quick else 2)

    def target(self):
        return self.model_

    def denoiser(self):
        return self.model_

    def generate(self):
        return sample(self.model_, self.inputs, STEPS)

    def fidelity(self, out, ref):
        return {"psnr": psnr(out, ref, data_range=float(ref.abs().max()))}

    def metrics(self, out):
        return {"mean": float(out.mean())}

    def methods(self, quick):
        adapter = ToyAdapter()

        def toy(name, make, **params):
            m = policy_method(name, make, **params)
            m.enable = lambda target, count_flops=True: fc.apply(target, make(**params), adapter, count_flops=count_flops)
            return m

        slow_down = Method("sleepy-peer", {"ms": 1}, enable=self._sleepy, peer=True, note="adds 1 ms per call")
        broken = Method("broken-peer", {}, enable=self._broken, peer=True)
        return [toy("fora", fc.fora, interval=2), toy("teacache", fc.teacache, threshold=0.3), slow_down, broken]

    def _sleepy(self, target):
        handle = target.register_forward_pre_hook(lambda *a: torch.cuda.is_available() or __import__("time").sleep(0.001))
        return handle.remove

    def _broken(self, target):
        raise RuntimeError("this peer does not support ToyTransformer")


def test_toy_bench_satisfies_the_protocol():
    assert isinstance(ToyBench(), Benchmark)


def test_runner_writes_schema_2(tmp_path):
    result = runner.run_benchmark(ToyBench(), quick=True, repeats=1, progress=False)
    assert result["schema"] == 2 and result["domain"] == "toy"
    assert result["baseline"]["flops"] > 0
    by_name = {r["method"]: r for r in result["runs"]}
    fora = by_name["fora"]
    assert fora["flops"] < result["baseline"]["flops"]
    assert fora["speedup_flops"] == pytest.approx(result["baseline"]["flops"] / fora["flops"])
    # the runner's FLOPs and the handle's own accounting agree
    assert 1 / fora["stats"]["compute_ratio"] == pytest.approx(fora["speedup_flops"], rel=0.05)
    assert fora["peak_cache_bytes"] == fora["stats"]["peak_cache_bytes"] > 0  # one spelling, stats and JSON
    assert 0 < fora["fidelity"]["psnr"] < float("inf")
    assert by_name["sleepy-peer"]["peer"] and by_name["sleepy-peer"]["speedup_flops"] == pytest.approx(1.0)
    assert "does not support" in by_name["broken-peer"]["skipped"]
    path = report.write(result, tmp_path)
    assert json.loads(path.read_text())["runs"][0]["method"] == "fora"
    assert path.with_suffix(".png").exists() and "| fora(interval=2) |" in path.with_suffix(".md").read_text()
    md, page = report.gather(tmp_path)
    assert "toy/euler" in md.read_text() and "<img" in page.read_text()
    assert "fora(interval=2)" in report.summary([result])


def test_a_row_is_chosen_by_its_label():
    result = runner.run_benchmark(ToyBench(), quick=True, only=["fora(interval=2)", "sleepy-peer"], progress=False)
    assert [row["method"] for row in result["runs"]] == ["fora", "sleepy-peer"]
    assert runner.run_benchmark(ToyBench(), quick=True, only=["fora(interval=3)"], progress=False) is None


def test_unknown_method_filter_is_an_error(tmp_path):
    assert runner.run_benchmark(ToyBench(), quick=True, only=["nope"], progress=False) is None
    with pytest.raises(SystemExit, match="matches no method of core's benchmarks; choose from .*teacache"):
        main(["bench", "core", "--quick", "--methods", "nope", "--out", str(tmp_path)])


def test_transfer_benchmarks_compare_profiles_fitted_at_28_steps_with_native_ones():
    from forecache.core.reference.benchmark import benchmarks

    by_name = {b.name: b for b in benchmarks()}
    assert set(by_name) == {"shapes-28", "shapes-20", "shapes-50"}
    assert by_name["shapes-50"].methods(quick=True) == []  # full runs only
    labels = [m.note for m in by_name["shapes-50"].methods(quick=False)]
    assert "teacache@2x: profile calibrated at 28 steps, used at 50" in labels
    assert any(n.startswith("magcache@4x: knob found") for n in labels)


def test_pareto_front():
    runs = [{"speedup_flops": s, "fidelity": {"psnr": p}} for s, p in [(1, 40), (2, 30), (2, 35), (3, 20), (1.5, 20)]]
    assert [(r["speedup_flops"], r["fidelity"]["psnr"]) for r in report.pareto_front(runs, "psnr")] == [(1, 40), (2, 35), (3, 20)]


def test_pareto_front_of_a_distance_keeps_the_smallest():
    # an RMSD to the uncached sample is better when smaller: the front keeps the closest run at each speedup
    runs = [{"speedup_flops": s, "fidelity": {"coord_rmsd_mean": d}}
            for s, d in [(1.96, 0.12), (1.96, 0.37), (2.94, 0.27), (2.94, 0.52), (2.94, 0.30)]]
    front = report.pareto_front(runs, "coord_rmsd_mean")
    assert [(r["speedup_flops"], r["fidelity"]["coord_rmsd_mean"]) for r in front] == [(1.96, 0.12), (2.94, 0.27)]
    assert report.lower_is_better("coord_rmsd_mean") and report.lower_is_better("n_nonfinite")
    assert not any(report.lower_is_better(k) for k in ("psnr", "ssim", "token_agreement", "atom_type_agreement"))


def test_image_metrics():
    a = torch.rand(2, 3, 16, 16)
    assert psnr(a, a) == float("inf") and ssim(a, a) == pytest.approx(1.0)
    noisy = (a + 0.1 * torch.randn_like(a)).clamp(0, 1)
    assert 15 < psnr(noisy, a) < 25
    assert ssim(noisy, a) < ssim((a + 0.01 * torch.randn_like(a)).clamp(0, 1), a) < 1.0


def test_gather_without_results_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="forecache bench"):
        report.gather(tmp_path)


def test_report_reads_schema_1_results(tmp_path):
    result = runner.run_benchmark(ToyBench(), quick=True, repeats=1, progress=False)
    for r in result["runs"]:  # a schema-1 file named the peak cache cache_bytes_peak
        if "peak_cache_bytes" in r:
            r["cache_bytes_peak"] = r.pop("peak_cache_bytes")
    result["schema"] = 1
    lines = report.table(result).splitlines()
    column = [c.strip() for c in lines[0].split("|")].index("cache MiB")
    row = next(line for line in lines if line.startswith("| fora(interval=2) |"))
    fora = next(r for r in result["runs"] if r["method"] == "fora")
    assert fora["cache_bytes_peak"] > 0
    assert [c.strip() for c in row.split("|")][column] == report._fmt(fora["cache_bytes_peak"] / 2**20)
