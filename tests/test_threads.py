"""The thread governor's decisions, on scripted measurements of the cores each unit used."""

from __future__ import annotations

import pytest
import torch

from sae_vlm_plugin import threads
from sae_vlm_plugin.threads import ENVIRONMENT_SWITCH, ThreadGovernor


class ScriptedClocks:
    """Stands in for ``time`` in ``sae_vlm_plugin.threads``: every unit lasts 0.1 s of wall time
    and uses ``cores`` cores (set by the test before the unit)."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self.cores = 1.0

    def perf_counter(self) -> float:
        return self.wall

    def process_time(self) -> float:
        return self.cpu

    def advance(self) -> None:
        self.wall += 0.1
        self.cpu += 0.1 * self.cores


@pytest.fixture
def clocks(monkeypatch):
    fake = ScriptedClocks()
    monkeypatch.setattr(threads, "time", fake)
    monkeypatch.delenv(ENVIRONMENT_SWITCH, raising=False)
    caller = torch.get_num_threads()
    torch.set_num_threads(4)
    yield fake
    torch.set_num_threads(caller)


def run_units(governor: ThreadGovernor, clocks: ScriptedClocks, cores: float, n: int) -> list[int]:
    """Run ``n`` units that use ``cores`` cores each (capped at their thread count); return the
    thread count each ran with."""
    seen = []
    for _ in range(n):
        with governor.unit():
            seen.append(torch.get_num_threads())
            clocks.cores = min(cores, seen[-1])
            clocks.advance()
        assert torch.get_num_threads() == 4  # the caller's count is back
    return seen


def test_free_cores_keep_every_thread(clocks):
    governor = ThreadGovernor(window=0.25)
    assert run_units(governor, clocks, cores=3.9, n=12) == [4] * 12


def test_shared_cores_cut_the_threads_after_one_window_and_a_probe_restores_them(clocks):
    governor = ThreadGovernor(window=0.25, probe_after=0.5)
    # 4 threads get 2.2 cores: the window (3 units of 0.1 s) shows shared cores -> 2 threads
    assert run_units(governor, clocks, cores=2.2, n=3) == [4, 4, 4]
    assert governor.threads == 2
    # two windows at 2 threads, then a trial window of 3 threads; still shared: back to 2
    assert run_units(governor, clocks, cores=2.2, n=9) == [2] * 6 + [3] * 3
    assert governor.threads == 2
    # the other process has gone: the next trial window uses its 3 threads and keeps them
    assert run_units(governor, clocks, cores=4.0, n=9) == [2] * 6 + [3] * 3
    assert governor.threads == 3


def test_units_longer_than_a_window_probe_after_seconds_not_after_a_count_of_units(clocks):
    # Each 0.1 s unit is a window of its own (a paper-scale MS call is one of about a second).
    governor = ThreadGovernor(window=0.05, probe_after=0.45)
    assert run_units(governor, clocks, cores=2.2, n=1) == [4]
    assert governor.threads == 2
    # 0.5 s of work later the other process has gone: the trial unit keeps its third thread
    assert run_units(governor, clocks, cores=4.0, n=7) == [2] * 5 + [3] + [3]
    assert governor.threads == 3


def test_it_can_be_switched_off_and_leaves_non_cpu_work_alone(clocks, monkeypatch):
    governor = ThreadGovernor(window=0.25)
    with governor.unit(on_cpu=False):
        clocks.cores = 0.1
        clocks.advance()
    assert governor.threads is None
    monkeypatch.setenv(ENVIRONMENT_SWITCH, "0")
    assert run_units(governor, clocks, cores=1.0, n=6) == [4] * 6
    assert governor.threads is None
