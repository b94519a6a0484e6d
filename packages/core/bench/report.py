"""Benchmark results as files: JSON, a Markdown table and a Pareto plot per benchmark, and one
page (Markdown and static HTML) gathering every domain."""

from __future__ import annotations

import html
import json
from pathlib import Path

FIDELITY_FIRST = ("psnr", "token_agreement", "ssim", "rmsd")
#: name parts of fidelity metrics where smaller is closer to the uncached output (distances, broken outputs)
LOWER_IS_BETTER = ("rmsd", "mse", "mae", "error", "distance", "nonfinite")


def lower_is_better(key: str) -> bool:
    """Whether a smaller value of fidelity metric ``key`` is better (``coord_rmsd_mean``: yes; ``psnr``: no)."""
    return any(part in LOWER_IS_BETTER for part in key.lower().split("_"))


def primary_fidelity(result: dict) -> str | None:
    """The fidelity metric plotted and sorted on (PSNR for images, agreement for tokens, ...)."""
    keys = [k for run in result["runs"] for k in run.get("fidelity", {})]
    for k in FIDELITY_FIRST:
        if k in keys:
            return k
    return keys[0] if keys else None


def _fmt(x) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if x != x:
            return "nan"
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(x)


def table(result: dict) -> str:
    """A Markdown table of one benchmark: one row per method, the baseline first."""
    fid = sorted({k for r in result["runs"] for k in r.get("fidelity", {})})
    met = sorted(set(result["baseline"]["metrics"]) | {k for r in result["runs"] for k in r.get("metrics", {})})
    base = result["baseline"]
    unit = base.get("unit")  # benchmarks counting work in units (tokens) get throughput columns

    def per_unit(r: dict) -> list[str]:
        return [_fmt(r.get("units_per_s")), _fmt(r.get("flops_per_unit"))] if unit else []

    head = ["method", "peer", "FLOPs speedup", "wall speedup", *fid, *met, "cache MiB",
            *([f"{unit}s/s", f"FLOPs/{unit}"] if unit else [])]
    rows = [["uncached", "", "1.00", "1.00", *["–"] * len(fid), *[_fmt(base["metrics"].get(k)) for k in met], "0",
             *per_unit(base)]]
    for r in result["runs"]:
        if "skipped" in r:
            rows.append([r["method"], "yes" if r["peer"] else "", "skipped", r["skipped"][:60],
                         *[""] * (len(fid) + len(met) + 1 + len(per_unit(r)))])
            continue
        cache = r.get("peak_cache_bytes", r.get("cache_bytes_peak"))  # schema 1 named it cache_bytes_peak
        rows.append([
            r.get("label", r["method"]), "yes" if r["peer"] else "",
            f"{r['speedup_flops']:.2f}", f"{r['speedup_wall']:.2f}",
            *[_fmt(r["fidelity"].get(k)) for k in fid], *[_fmt(r["metrics"].get(k)) for k in met],
            _fmt(cache / 2**20) if cache is not None else "–", *per_unit(r),
        ])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def pareto_plot(result: dict, path: Path) -> Path | None:
    """Fidelity against FLOPs speedup, forecache presets as dots (their Pareto front joined),
    peers as crosses."""
    key = primary_fidelity(result)
    runs = [r for r in result["runs"] if "skipped" not in r and key in r.get("fidelity", {})]
    if key is None or not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = sorted({r["method"] for r in runs})
    palette = [*plt.cm.tab20.colors, *plt.cm.tab20b.colors]  # 40 distinct colours
    colours = {n: palette[i % len(palette)] for i, n in enumerate(names)}
    finite = [r["fidelity"][key] for r in runs if r["fidelity"][key] != float("inf")]
    cap = (max(finite) + 5.0) if finite else 100.0
    for r in runs:
        ax.scatter(r["speedup_flops"], _finite(r["fidelity"][key], cap), color=colours[r["method"]],
                   marker="x" if r["peer"] else "o", s=40, label=("peer: " if r["peer"] else "") + r["method"])
    front = pareto_front([r for r in runs if not r["peer"]], key)
    if front:
        ax.plot([r["speedup_flops"] for r in front], [_finite(r["fidelity"][key], cap) for r in front], "k--", lw=0.8,
                label="forecache Pareto front")
    handles, labels = ax.get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    ax.legend(seen.values(), seen.keys(), fontsize=7, ncol=2, loc="best")
    infinite = len(finite) < len(runs)
    ax.set_xlabel("FLOPs speedup (uncached = 1)" + ("; identical outputs drawn at the top edge" if infinite else ""))
    ax.set_ylabel(f"{key} vs uncached ({'lower' if lower_is_better(key) else 'higher'} is better)")
    ax.set_title(f"{result['domain']}/{result['benchmark']} on {result['model']}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _finite(x: float, cap: float) -> float:
    """Identical outputs give infinite PSNR; plot them just above the best finite value."""
    return cap if x == float("inf") else x


def pareto_front(runs: list[dict], key: str) -> list[dict]:
    """Runs not beaten on both FLOPs speedup and fidelity by another run, by speedup (fidelity in the
    direction :func:`lower_is_better` gives)."""
    sign = -1.0 if lower_is_better(key) else 1.0
    scored = [(r, (r["speedup_flops"], sign * r["fidelity"][key])) for r in runs]
    front = [r for r, s in scored if not any(o[0] >= s[0] and o[1] >= s[1] and o != s for _, o in scored)]
    return sorted(front, key=lambda r: r["speedup_flops"])


def write(result: dict, out_dir: str | Path) -> Path:
    """``out_dir/<domain>/<benchmark>.json`` plus ``.md`` and ``.png`` beside it."""
    folder = Path(out_dir) / result["domain"]
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / result["benchmark"]
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    png = pareto_plot(result, stem.with_suffix(".png"))
    body = [f"# {result['domain']}/{result['benchmark']}", "", _context(result), "", table(result)]
    if png:
        body += ["", f"![Pareto plot]({png.name})"]
    stem.with_suffix(".md").write_text("\n".join(body) + "\n")
    return stem.with_suffix(".json")


def _context(result: dict) -> str:
    b, hw = result["baseline"], result["hardware"]
    work = f", {b['units']} {b['unit']}s ({b['units_per_s']:.3g} {b['unit']}s/s)" if "unit" in b else ""
    return (
        f"Model `{result['model']}`{' (quick)' if result.get('quick') else ''}, on {hw['device']} with "
        f"{hw['threads']} threads; uncached: {b['wall_s']:.3f} s, {b['flops']:.3g} FLOPs{work}. "
        "Speedups are against the uncached run; fidelity compares each method's outputs with the "
        "uncached outputs of the same seeds."
    )


def gather(out_dir: str | Path) -> tuple[Path, Path]:
    """One Markdown page and one static HTML page with every benchmark under ``out_dir``."""
    out_dir = Path(out_dir)
    results = [json.loads(p.read_text()) for p in sorted(out_dir.glob("*/*.json"))]
    if not results:
        raise FileNotFoundError(f"no benchmark results under {out_dir}; run `forecache bench DOMAIN --out {out_dir}` first")
    md = ["# forecache benchmark report", ""]
    page = ["<!doctype html><meta charset=utf-8><title>forecache report</title>",
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}</style><h1>forecache benchmark report</h1>"]
    for r in results:
        title = f"{r['domain']}/{r['benchmark']}"
        png = Path(r["domain"]) / f"{r['benchmark']}.png"
        md += [f"## {title}", "", _context(r), "", table(r), ""]
        page += [f"<h2>{html.escape(title)}</h2><p>{html.escape(_context(r))}</p>", _html_table(table(r))]
        if (out_dir / png).exists():
            md += [f"![{title}]({png.as_posix()})", ""]
            page.append(f'<img src="{png.as_posix()}" alt="{html.escape(title)}">')
    (out_dir / "REPORT.md").write_text("\n".join(md))
    (out_dir / "report.html").write_text("\n".join(page))
    return out_dir / "REPORT.md", out_dir / "report.html"


def _html_table(markdown: str) -> str:
    rows = [line.strip("|").split("|") for line in markdown.splitlines() if not line.startswith("|---")]
    cells = ["<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{html.escape(c.strip())}</{'th' if i == 0 else 'td'}>"
                              for c in row) + "</tr>" for i, row in enumerate(rows)]
    return "<table>" + "".join(cells) + "</table>"


#: the widest method label the plain-text summary prints
LABEL_WIDTH = 48


def summary(results: list[dict]) -> str:
    """One plain-text table over benchmarks: method, FLOPs and wall speedup, main fidelity and
    main task metric (the `make demo` printout). Columns are as wide as their longest entry."""
    rows = [("benchmark", "method", "FLOPs x", "wall x", "fidelity", "task metric")]
    for r in results:
        key = primary_fidelity(r)
        task = next(iter(r["baseline"]["metrics"]), None)
        base_task = _fmt(r["baseline"]["metrics"].get(task)) if task else "–"
        rows.append((f"{r['domain']}/{r['benchmark']}", "uncached", "1.00", "1.00", "–", f"{task or ''} {base_task}"))
        for run in r["runs"]:
            label = ("[peer] " if run["peer"] else "") + run.get("label", run["method"])
            if len(label) > LABEL_WIDTH:  # peers' labels spell out every option; the JSON keeps them whole
                label = label[:LABEL_WIDTH - 1] + "…"
            if "skipped" in run:
                rows.append(("", label, "", "", "skipped: " + run["skipped"][:60], ""))
                continue
            fid = f"{key} {_fmt(run['fidelity'].get(key))}" if key else "–"
            met = f"{task} {_fmt(run['metrics'].get(task))}" if task else "–"
            rows.append(("", label, f"{run['speedup_flops']:.2f}", f"{run['speedup_wall']:.2f}", fid, met))
    widths = [max(len(row[i]) for row in rows if not row[4].startswith("skipped") or i < 2) for i in range(6)]
    right = (False, False, True, True, False, False)
    return "\n".join(
        "  ".join(cell.rjust(w) if r else cell.ljust(w) for cell, w, r in zip(row, widths, right)).rstrip()
        for row in rows
    )
