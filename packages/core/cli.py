"""The `forecache` command. Benchmarks (`bench`, `report`) and `calibrate` arrive with the
benchmark harness; for now it lists what is available."""

from __future__ import annotations

import argparse
import sys


def _presets(_: argparse.Namespace) -> int:
    from .presets import PRESETS

    width = max(map(len, PRESETS))
    for name, preset in PRESETS.items():
        summary = (preset.__doc__ or "").strip().splitlines()[0]
        print(f"{name:<{width}}  {summary}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="forecache", description="Training-free diffusion caching.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("presets", help="list the named methods and their papers").set_defaults(run=_presets)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
