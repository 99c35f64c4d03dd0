"""Run every benchmark and print each figure as a ratio against its baseline.

    python benchmarks/run.py            # everything, full sizes
    python benchmarks/run.py --quick    # smaller sizes, a smoke run
    python benchmarks/run.py --only ms  # benchmarks whose module name contains "ms"

Each ``benchmarks/bench_*.py`` module exposes ``run(quick: bool) -> list[Figure]``. Figures are
ratios measured side by side in one run (see ``harness.py``); ``RESULTS.md`` holds the latest.
"""

from __future__ import annotations

import argparse
import importlib
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from harness import Figure  # noqa: E402


def discover(only: str | None) -> list[str]:
    names = sorted(p.stem for p in HERE.glob("bench_*.py"))
    return [n for n in names if only is None or only in n]


def format_table(figures: list[Figure]) -> str:
    rows = [("benchmark", "figure", "ratio", "baseline", "verdict", "detail")]
    for f in figures:
        rows.append(
            (f.benchmark, f.name, f"{f.ratio:.3g}{f.unit}", f.baseline, f.verdict, f.detail)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    parser.add_argument("--only", help="run only benchmarks whose module name contains this")
    args = parser.parse_args(argv)

    from sae_vlm_plugin.environment import environment_report

    env = environment_report()
    print(
        f"# torch {env['torch']} on {env['device']}, {env['cpu_threads']} threads, {env['platform']}"
    )
    figures: list[Figure] = []
    for name in discover(args.only):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        figures.extend(importlib.import_module(name).run(quick=args.quick))
    print(format_table(figures) if figures else "no benchmark matched")
    return 0


if __name__ == "__main__":
    sys.exit(main())
