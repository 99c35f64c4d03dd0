"""CPU thread counts that follow how many cores the process actually gets.

On a machine whose cores another process also uses, every multi-threaded torch operation waits
at its barrier for a thread the scheduler has parked. A training step of many medium-sized
operations, or a short MS call, then runs slower on all threads than on one (measured on
2 cores beside one busy process: the paper's Matryoshka step at x8 takes 2.7x its quiet time
with 2 threads, 1.8x with 1).

``ThreadGovernor`` measures the units of repeated work it runs (training steps, MS calls) in
windows of at least ``window`` seconds: the cores they used, ``u = process CPU time / wall
time``, which reaches the thread count ``n`` when the cores are free (waiting threads spin, so
they count) and drops when they are shared. After a window with ``u < SHARED_BELOW * n`` the
next units run on ``max(1, floor(u + 0.25))`` threads. After every ``probe_after`` seconds of
work below the maximum it tries one thread more for a window, and keeps it if that window used
it (seconds, not windows: a unit longer than a window is a window of its own, and a count of
windows would leave second-long MS calls on fewer threads for minutes after the load ended). Each unit
runs with the chosen count; the caller's count is restored afterwards.

Only CPU work is governed (a CUDA step leaves the CPU idle by design). A thread count can move
floating-point sums in their last bits, so governed work repeats bit for bit only while the
load does; ``SAE_VLM_ADAPTIVE_THREADS=0`` turns the governor off.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

SHARED_BELOW = 0.8
"""A unit that used less than this fraction of its threads' cores ran on shared cores."""

ENVIRONMENT_SWITCH = "SAE_VLM_ADAPTIVE_THREADS"


class ThreadGovernor:
    """Chooses torch's CPU thread count for successive units of work (see the module docstring)."""

    def __init__(
        self, max_threads: int | None = None, window: float = 0.25, probe_after: float = 5.0
    ) -> None:
        self.max_threads = max_threads
        self.window = window
        self.probe_after = probe_after
        self.threads: int | None = None
        """The count units run with (None: not chosen yet, the caller's)."""
        self._trial: int | None = None
        self._seconds_since_change = 0.0
        self._wall = self._cpu = 0.0

    @property
    def enabled(self) -> bool:
        return os.environ.get(ENVIRONMENT_SWITCH, "1") != "0"

    @contextmanager
    def unit(self, on_cpu: bool = True) -> Iterator[None]:
        """Run one unit of work with the governed thread count and learn from it."""
        if not (on_cpu and self.enabled):
            yield
            return
        caller = torch.get_num_threads()
        ceiling = min(self.max_threads or caller, caller)
        threads = min(self._trial or self.threads or ceiling, ceiling)
        torch.set_num_threads(threads)
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self._wall += time.perf_counter() - wall
            self._cpu += time.process_time() - cpu
            torch.set_num_threads(caller)
            if self._wall >= self.window:
                self._decide(threads, self._cpu / self._wall, ceiling, self._wall)
                self._wall = self._cpu = 0.0

    def _decide(self, threads: int, used: float, ceiling: int, seconds: float) -> None:
        """After a window of ``seconds`` run on ``threads`` threads that used ``used`` cores."""
        previous, trial = self.threads, self._trial
        if threads > 1 and used < SHARED_BELOW * threads:  # shared cores
            fewer = max(1, min(threads - 1, math.floor(used + 0.25)))
            self.threads = fewer if trial is None else previous
        else:
            self.threads = threads
        self._trial = None
        changed = trial is not None or self.threads != previous
        self._seconds_since_change = 0.0 if changed else self._seconds_since_change + seconds
        current = self.threads or ceiling
        if current < ceiling and self._seconds_since_change >= self.probe_after:
            self._trial = current + 1
