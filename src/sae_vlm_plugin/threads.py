"""CPU thread counts that follow how many cores other processes leave free.

On a machine whose cores another process also uses, every multi-threaded torch operation waits
at its barrier for a thread the scheduler has parked. A training step of many medium-sized
operations, or a short MS call, then runs slower on all threads than on one (measured on
2 cores beside one busy process: the paper's Matryoshka step at x8 takes 2.7x its quiet time
with 2 threads, 1.8x with 1).

``ThreadGovernor`` looks at the units of repeated work it runs (training steps, MS calls) in
windows of at least ``window`` seconds of that work. Over each window's wall-clock span it reads
the CPU time of the whole machine (``/proc/stat``) and of this process, and so the cores the
*other* processes used, ``o = (machine CPU time - own CPU time) / span``. The next units run
on ``max(1, round(C - o))`` threads, ``C`` the machine's CPUs, at most the caller's count. It
does not judge from this process's own CPU time: work with serial stretches (sorting, Python)
uses fewer cores than it has threads on an idle machine too, and would be cut for nothing.
Each unit runs with the chosen count; the caller's count is restored afterwards.

It governs MS calls and extraction's forwards by default, and training steps with
``adaptive_threads`` (the demo's SAEs). In a loop of units (``loop``) the work between them
keeps the governed count too. Only CPU work is governed (a CUDA step leaves the CPU idle by
design), and only where
``/proc/stat`` exists (Linux); elsewhere the caller's count is kept. A thread count can move
floating-point sums in their last bits, so governed work repeats bit for bit only while the
load does; ``SAE_VLM_ADAPTIVE_THREADS=0`` turns the governor off.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

ENVIRONMENT_SWITCH = "SAE_VLM_ADAPTIVE_THREADS"
PROC_STAT = Path("/proc/stat")


def machine_cpu_seconds() -> tuple[float, int] | None:
    """CPU seconds every process has spent (user, nice, system, irq, softirq, steal of
    ``/proc/stat``'s ``cpu`` line) and the number of CPUs; None where there is no /proc/stat."""
    try:
        lines = PROC_STAT.read_text().splitlines()
    except OSError:
        return None
    fields = [int(v) for v in lines[0].split()[1:9]]
    busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7]
    n_cpus = sum(1 for line in lines[1:] if line.startswith("cpu"))
    return busy / os.sysconf("SC_CLK_TCK"), n_cpus


class ThreadGovernor:
    """Chooses torch's CPU thread count for successive units of work (see the module docstring)."""

    def __init__(self, max_threads: int | None = None, window: float = 0.25) -> None:
        self.max_threads = max_threads
        self.window = window
        self.threads: int | None = None
        """The count units run with (None: not chosen yet, the caller's)."""
        self._work = 0.0
        self._start: tuple[float, float, float, int] | None = None  # see _clocks
        self._caller: int | None = None  # the caller's count, inside ``loop``

    @property
    def enabled(self) -> bool:
        return os.environ.get(ENVIRONMENT_SWITCH, "1") != "0"

    @contextmanager
    def loop(self, on_cpu: bool = True) -> Iterator[None]:
        """A loop of units (a training loop): what runs between the units (reading the next
        batch, bookkeeping) keeps the governed count too, and the caller's count comes back when
        the loop ends. Switching back to the caller's count after every unit would run that
        in-between work on all threads, which on shared cores costs more than the units."""
        if not (on_cpu and self.enabled) or self._caller is not None:  # inner loops: the outer's
            yield
            return
        self._caller = torch.get_num_threads()
        try:
            yield
        finally:
            torch.set_num_threads(self._caller)
            self._caller = None

    @contextmanager
    def unit(self, on_cpu: bool = True) -> Iterator[None]:
        """Run one unit of work with the governed thread count and learn from it; outside a
        ``loop`` the caller's count is restored after it."""
        if not (on_cpu and self.enabled):
            yield
            return
        caller = self._caller or torch.get_num_threads()
        ceiling = min(self.max_threads or caller, caller)
        threads = min(self.threads or ceiling, ceiling)
        if self._start is None:
            self._start = self._clocks()
        torch.set_num_threads(threads)
        began = time.perf_counter()
        try:
            yield
        finally:
            self._work += time.perf_counter() - began
            if self._work >= self.window:
                self._decide(ceiling)
            if self._caller is None:
                torch.set_num_threads(caller)
            else:
                torch.set_num_threads(min(self.threads or ceiling, ceiling))

    def _clocks(self) -> tuple[float, float, float, int] | None:
        """Wall time, this process's CPU time, the machine's CPU time and its CPU count."""
        machine = machine_cpu_seconds()
        if machine is None:
            return None
        return time.perf_counter(), time.process_time(), *machine

    def _decide(self, ceiling: int) -> None:
        """After a window: threads for the cores the other processes left free over its span."""
        start, end = self._start, self._clocks()
        self._work, self._start = 0.0, None
        if start is None or end is None or end[0] <= start[0]:
            return
        others = max(0.0, (end[2] - start[2]) - (end[1] - start[1])) / (end[0] - start[0])
        self.threads = max(1, min(ceiling, round(end[3] - others)))
