"""Every benchmark still runs against the package (``benchmarks/run.py --quick``, one module at
a time): a benchmark that no longer fits the package's API fails here, not on the day someone
sits down to measure. The figures of a quick run are not checked (they are smoke sizes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sae_vlm_plugin.threads import ENVIRONMENT_SWITCH

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
@pytest.mark.parametrize("module", sorted(p.stem for p in BENCHMARKS.glob("bench_*.py")))
def test_the_benchmark_runs_at_its_quick_sizes(module):
    env = {k: v for k, v in os.environ.items() if k != ENVIRONMENT_SWITCH}  # governed, as shipped
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run.py"), "--quick", "--only", module],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    table = run.stdout.splitlines()
    assert len(table) >= 4, run.stdout  # environment line, header, rule, at least one figure
    assert table[2].startswith("---"), run.stdout


def test_the_runner_refuses_an_unknown_device():
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run.py"), "--device", "tpu"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert "choose cpu or cuda[:N]" in run.stderr
