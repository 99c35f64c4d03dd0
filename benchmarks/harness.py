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
from pathlib import Path

import torch


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
    candidates: dict[str, Callable[[], object]],
    repeats: int = 5,
    warmup: int = 1,
    device: str = "cpu",
) -> dict[str, float]:
    """Median seconds of each callable, run round-robin ``repeats`` times after ``warmup`` rounds.
    On a CUDA ``device`` each run ends when the GPU has finished its work."""
    finish = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            gc.collect()
            finish()
            start = time.perf_counter()
            fn()
            finish()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


def proc_status_kib(field: str) -> int:
    """A field of ``/proc/self/status`` in KiB (``VmRSS``, ``VmHWM``: the peak since a reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_memory(device: str = "cpu") -> None:
    """Start a new peak: CUDA's peak allocated memory, or this process's peak resident memory
    (``VmHWM``, reset to the current resident size through ``/proc/self/clear_refs``)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")


def current_memory_gib(device: str = "cpu") -> float:
    """Memory held now: allocated on CUDA, resident on the CPU (GiB)."""
    if device.startswith("cuda"):
        return torch.cuda.memory_allocated(device) / 2**30
    return proc_status_kib("VmRSS") / 2**20


def peak_memory_gib(device: str = "cpu") -> float:
    """Peak since ``reset_peak_memory``: allocated on CUDA, resident on the CPU (GiB)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**30
    return proc_status_kib("VmHWM") / 2**20


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
