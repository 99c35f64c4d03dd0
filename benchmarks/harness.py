"""Side-by-side timing for the benchmarks: every figure is a ratio against a baseline that is
measured in the same run, interleaved with the candidate, so machine noise hits both alike."""

from __future__ import annotations

import gc
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """One reported number: ``ratio = candidate / baseline`` (a time ratio unless ``unit`` says
    otherwise), with the goal it is held to (``goal_max`` or ``goal_min``, either may be None)."""

    benchmark: str
    name: str
    ratio: float
    baseline: str
    goal_max: float | None = None
    goal_min: float | None = None
    detail: str = ""
    unit: str = "x"

    @property
    def verdict(self) -> str:
        if self.goal_max is not None and self.ratio > self.goal_max:
            return f"MISSED (goal <= {self.goal_max:g})"
        if self.goal_min is not None and self.ratio < self.goal_min:
            return f"MISSED (goal >= {self.goal_min:g})"
        if self.goal_max is None and self.goal_min is None:
            return "-"
        goal = f"<= {self.goal_max:g}" if self.goal_max is not None else f">= {self.goal_min:g}"
        return f"met (goal {goal})"


def time_side_by_side(
    candidates: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1
) -> dict[str, float]:
    """Median seconds of each callable, run round-robin ``repeats`` times after ``warmup`` rounds."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            gc.collect()
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


@contextmanager
def busy_process(seconds: float = 120.0) -> Iterator[None]:
    """Another CPU-bound process on the machine for the duration of the block (a Python busy
    loop that also ends by itself after ``seconds``, should the benchmark be killed)."""
    code = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass\n"
    busy = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.5)  # let the scheduler see it
        yield
    finally:
        busy.kill()
        busy.wait()
