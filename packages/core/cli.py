"""The `forecache` command: `presets`, `calibrate`, `bench`, `report`."""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap

from .calibration import command as calibration_command


def _presets(args: argparse.Namespace) -> int:
    """Every registered preset (all installed domains, or ``--domain``), grouped by domain: name,
    strength knob (``-``: none to search) and the first sentence of its docstring (the paper)."""
    from .presets.registry import PresetInfo, preset_infos

    try:
        found = preset_infos(args.domain)
    except ValueError as error:
        raise SystemExit(f"forecache presets: {error}") from None
    by_domain: dict[str, list[PresetInfo]] = {}
    for info in found.values():
        by_domain.setdefault(info.domain, []).append(info)
    width = max(map(len, found))
    knob_width = max(len(info.knob or "-") for info in found.values())
    indent = " " * (2 + width + 2 + knob_width + 2)
    columns = max(shutil.get_terminal_size((100, 24)).columns, len(indent) + 40)
    for domain in sorted(by_domain, key=lambda d: (d != "core", d)):  # core first, then the domains
        print(domain)
        for info in by_domain[domain]:
            head = f"  {info.name:<{width}}  {info.knob or '-':<{knob_width}}  "
            print(textwrap.fill(info.summary, columns, initial_indent=head, subsequent_indent=indent,
                                break_on_hyphens=False, break_long_words=False))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import discovery, report, runner

    results, known = [], set()
    for bench in discovery.benchmarks(args.domain):
        result = runner.run_benchmark(bench, quick=args.quick, only=args.methods, repeats=args.repeats)
        if result is None:
            known.update(m.name for m in bench.methods(args.quick))
            print(f"{bench.domain}/{bench.name}: no methods to run" + (" in a quick run" if args.quick else ""))
            continue
        path = report.write(result, args.out)
        print(f"wrote {path} (+ .md, .png)")
        results.append(result)
    if args.methods and not results:
        raise SystemExit(f"forecache bench: --methods {' '.join(args.methods)} matches no method of {args.domain}'s "
                         f"benchmarks; choose from {sorted(known)}")
    print(report.summary(results))
    return 0


def _report(args: argparse.Namespace) -> int:
    from .bench import report

    md, page = report.gather(args.dir)
    print(f"wrote {md} and {page}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="forecache", description="Training-free diffusion caching.")
    sub = parser.add_subparsers(dest="command", required=True)
    presets = sub.add_parser("presets", help="list the named methods of every installed domain: knob and paper")
    presets.add_argument("--domain", help="only this domain's presets (e.g. core, science, dllm)")
    presets.set_defaults(run=_presets)
    calibration_command.add_parser(sub)
    bench = sub.add_parser("bench", help="benchmark a domain's methods and peers against the uncached model")
    bench.add_argument("domain", help="a domain with registered benchmarks (e.g. core), or 'all'")
    bench.add_argument("--quick", action="store_true", help="fewer inputs and settings")
    bench.add_argument("--methods", nargs="+", help="only these methods (names as in the JSON), or rows by label, "
                       "e.g. 'ab_forecast(interval=3,order=2)'")
    bench.add_argument("--out", default="bench-out", help="results folder (default: bench-out)")
    bench.add_argument("--repeats", type=int, help="timed baseline/method pairs (default 3, quick 1)")
    bench.set_defaults(run=_bench)
    rep = sub.add_parser("report", help="gather every domain's results into one Markdown and HTML page")
    rep.add_argument("dir", nargs="?", default="bench-out")
    rep.set_defaults(run=_report)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
