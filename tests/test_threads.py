"""The thread governor's decisions, on a scripted machine: how many cores this process and the
other processes used during each unit of work."""

from __future__ import annotations

import pytest
import torch

from sae_vlm_plugin import threads
from sae_vlm_plugin.threads import ENVIRONMENT_SWITCH, ThreadGovernor, machine_cpu_seconds


class ScriptedMachine:
    """Stands in for ``time`` and ``/proc/stat`` in ``sae_vlm_plugin.threads``: a machine of
    ``n_cpus`` CPUs where every unit lasts 0.1 s of wall time, this process uses ``own`` cores
    and the other processes ``others`` cores (set by the test before the unit)."""

    def __init__(self, n_cpus: int = 4) -> None:
        self.n_cpus = n_cpus
        self.wall = self.own_cpu = self.machine_cpu = 0.0
        self.own = 1.0
        self.others = 0.0

    def perf_counter(self) -> float:
        return self.wall

    def process_time(self) -> float:
        return self.own_cpu

    def cpu_seconds(self) -> tuple[float, int]:
        return self.machine_cpu, self.n_cpus

    def advance(self) -> None:
        self.wall += 0.1
        self.own_cpu += 0.1 * self.own
        self.machine_cpu += 0.1 * (self.own + self.others)


@pytest.fixture
def machine(monkeypatch):
    fake = ScriptedMachine()
    monkeypatch.setattr(threads, "time", fake)
    monkeypatch.setattr(threads, "machine_cpu_seconds", fake.cpu_seconds)
    monkeypatch.delenv(ENVIRONMENT_SWITCH, raising=False)
    caller = torch.get_num_threads()
    torch.set_num_threads(4)
    yield fake
    torch.set_num_threads(caller)


def run_units(
    governor: ThreadGovernor, machine: ScriptedMachine, own: float, others: float, n: int
) -> list[int]:
    """Run ``n`` units using ``own`` cores each (at most their thread count) beside other
    processes using ``others``; return the thread count each unit ran with."""
    seen = []
    machine.others = others
    for _ in range(n):
        with governor.unit():
            seen.append(torch.get_num_threads())
            machine.own = min(own, seen[-1])
            machine.advance()
        assert torch.get_num_threads() == 4  # the caller's count is back
    return seen


def test_an_idle_machine_keeps_every_thread_even_for_work_with_serial_stretches(machine):
    # 4 threads using 1.3 cores on their own is the work's shape, not a shared machine
    governor = ThreadGovernor(window=0.25)
    assert run_units(governor, machine, own=1.3, others=0.05, n=12) == [4] * 12


def test_busy_cores_cut_the_threads_after_one_window_and_their_release_restores_them(machine):
    governor = ThreadGovernor(window=0.25)
    # another process takes 2.2 of the 4 CPUs: the window (3 units of 0.1 s) -> 2 threads
    assert run_units(governor, machine, own=4.0, others=2.2, n=6) == [4, 4, 4, 2, 2, 2]
    assert governor.threads == 2
    # it has gone: one window later every thread is back
    assert run_units(governor, machine, own=4.0, others=0.0, n=6) == [2, 2, 2, 4, 4, 4]
    # however busy the machine, one thread is left
    assert run_units(governor, machine, own=4.0, others=9.0, n=6) == [4, 4, 4, 1, 1, 1]


def test_the_window_spans_the_time_between_units_too(machine):
    # Another process busy while this one is between units (its data loading, say) counts.
    governor = ThreadGovernor(window=0.25)
    for _ in range(3):
        with governor.unit():
            machine.others = 0.0
            machine.advance()
        machine.own, machine.others = 0.0, 4.0  # 0.1 s between units, 4 other cores busy
        machine.advance()
    # the window's span, 3 units and the 2 gaps between them (0.5 s): others used 0.8 CPU
    # seconds, 1.6 cores
    assert governor.threads == 2  # round(4 - 1.6)


def test_in_a_loop_the_governed_count_holds_between_units_and_the_callers_returns_after(
    machine,
):
    governor = ThreadGovernor(window=0.25)
    machine.others = 2.2
    between = []
    with governor.loop():
        with governor.loop():  # an inner loop leaves the outer one in charge
            for _ in range(6):
                with governor.unit():
                    machine.own = float(torch.get_num_threads())
                    machine.advance()
                between.append(torch.get_num_threads())  # reading the next batch, say
        assert torch.get_num_threads() == 2  # the inner loop's end restored nothing
    assert between == [4, 4, 2, 2, 2, 2]  # the window (3 units) decided 2 for what follows
    assert torch.get_num_threads() == 4  # the caller's count is back after the loop


def test_it_can_be_switched_off_and_leaves_non_cpu_work_and_other_systems_alone(
    machine, monkeypatch
):
    governor = ThreadGovernor(window=0.25)
    with governor.unit(on_cpu=False):
        machine.others = 4.0
        machine.advance()
    assert governor.threads is None
    monkeypatch.setenv(ENVIRONMENT_SWITCH, "0")
    assert run_units(governor, machine, own=1.0, others=4.0, n=6) == [4] * 6
    assert governor.threads is None
    monkeypatch.delenv(ENVIRONMENT_SWITCH)
    monkeypatch.setattr(threads, "machine_cpu_seconds", lambda: None)  # no /proc/stat
    assert run_units(governor, machine, own=1.0, others=4.0, n=6) == [4] * 6
    assert governor.threads is None


def test_proc_stat_is_read_as_cpu_seconds_and_a_cpu_count():
    reading = machine_cpu_seconds()
    if reading is None:
        pytest.skip("no /proc/stat on this system")
    seconds, n_cpus = reading
    assert seconds > 0
    assert n_cpus >= 1
