"""Every benchmark still runs against the package (``benchmarks/run.py --quick --only <module>``,
in this process: the package is imported once per worker, not once per benchmark): a benchmark
that no longer fits the package's API fails here, not on the day someone sits down to measure.
The figures of a quick run are not checked (they are smoke sizes)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from sae_vlm_plugin.threads import ENVIRONMENT_SWITCH

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def runner(monkeypatch) -> Iterator[ModuleType]:
    """``benchmarks/run.py`` as a module, governed as shipped; the environment variables and
    torch's thread count a benchmark sets are put back afterwards."""
    environment, threads = dict(os.environ), torch.get_num_threads()
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    os.environ.pop(ENVIRONMENT_SWITCH, None)
    try:
        yield importlib.import_module("run")
    finally:
        os.environ.clear()
        os.environ.update(environment)
        torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("module", sorted(p.stem for p in BENCHMARKS.glob("bench_*.py")))
def test_the_benchmark_runs_at_its_quick_sizes(module, runner, capsys):
    assert runner.main(["--quick", "--only", module]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) >= 4, table  # environment line, header, rule, at least one figure
    assert table[2].startswith("---"), table


def test_the_runner_refuses_an_unknown_device(runner, capsys):
    with pytest.raises(SystemExit) as refused:
        runner.main(["--device", "tpu"])
    assert refused.value.code == 2
    assert "choose cpu or cuda[:N]" in capsys.readouterr().err
