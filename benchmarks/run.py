"""Run every benchmark and print each figure as a ratio against its baseline.

    python benchmarks/run.py            # everything, full sizes
    python benchmarks/run.py --quick    # smaller sizes, a smoke run
    python benchmarks/run.py --only ms  # benchmarks whose module name contains "ms"
    python benchmarks/run.py --device cuda --only training_step  # on a GPU: those that run there

Each ``benchmarks/bench_*.py`` module exposes ``run(quick: bool) -> list[Figure]``; a module that
also runs on an accelerator lists the device types in ``DEVICES`` and takes ``run(quick, device)``
(CUDA: the models in bfloat16 where the work is a model's forward). Figures are
ratios measured side by side in one run (see ``harness.py``); ``RESULTS.md`` holds the latest.
"""

from __future__ import annotations

import argparse
import importlib
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the bench_* modules beside this file, when imported from elsewhere

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
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu (default) or cuda[:N]: on a GPU, the benchmarks that run there (training step, "
        "MS, real-size extraction and training)",
    )
    args = parser.parse_args(argv)
    device_type = args.device.split(":")[0]
    if device_type not in ("cpu", "cuda"):
        parser.error(f"--device {args.device!r}: choose cpu or cuda[:N]")
    if device_type == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")

    from sae_vlm_plugin.environment import environment_report

    env = environment_report()
    print(
        f"# torch {env['torch']} on {env['device']}, {env['cpu_threads']} threads, {env['platform']}"
    )
    figures: list[Figure] = []
    for name in discover(args.only):
        module = importlib.import_module(name)
        devices = getattr(module, "DEVICES", ("cpu",))
        if device_type not in devices:
            print(f"skipping {name}: it runs on {', '.join(devices)}", file=sys.stderr)
            continue
        print(f"running {name} ...", file=sys.stderr, flush=True)
        if hasattr(module, "DEVICES"):
            figures.extend(module.run(quick=args.quick, device=args.device))
        else:
            figures.extend(module.run(quick=args.quick))
    print(format_table(figures) if figures else "no benchmark matched")
    return 0


if __name__ == "__main__":
    sys.exit(main())
