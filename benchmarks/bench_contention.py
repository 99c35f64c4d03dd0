"""The loaded machine: figures with one other CPU-bound process running, against the same figure
on the quiet machine, measured back to back in one run.

- MS at 1,000 images x 4,096 latents (top-k codes, k = 20): many calls, as the training-time
  evaluator and a sweep of analyses make them; and at the paper's scale (50,000 images x
  65,536 latents); each with the thread governor (the default) and without it
  (``SAE_VLM_ADAPTIVE_THREADS=0``).
- the paper's Matryoshka training step, d_in 768, x8, batch 4096, through SAELens'
  ``SAETrainer.step``: with the governor (``adaptive_threads=True``) and without it (the
  default, which repeats bit for bit whatever the machine's load).

Goal (issue #16): a loaded figure at most 2x its quiet value. The governor needs a window of
work (0.25 s) to see the shared cores, so each loaded case first runs that long unmeasured.

    python benchmarks/run.py --only contention [--quick]
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch
from bench_monosemanticity import NAIVE, NAIVE_QUICK, SCALE, SCALE_QUICK, random_topk_codes
from bench_training_step import K, _stepper, _trainer
from harness import Figure, busy_process

from sae_vlm_plugin.metrics.monosemanticity import monosemanticity_score
from sae_vlm_plugin.threads import ENVIRONMENT_SWITCH, ThreadGovernor
from sae_vlm_plugin.training import (
    PaperMatryoshkaBatchTopKTrainingSAE,
    PaperMatryoshkaBatchTopKTrainingSAEConfig,
    paper_learning_rate,
    prepare_paper_trainer,
)

BENCHMARK = "contention"


def _median_seconds(fn: Callable[[], object], repeats: int, settle: float) -> float:
    """Median time of ``fn`` after running it for ``settle`` seconds unmeasured."""
    end = time.perf_counter() + settle
    while time.perf_counter() < end:
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _quiet_and_loaded(fn: Callable[[], object], repeats: int, settle: float) -> tuple[float, float]:
    quiet = _median_seconds(fn, repeats, settle)
    with busy_process():
        loaded = _median_seconds(fn, repeats, settle)
    _median_seconds(fn, 1, settle)  # quiet again: a governor sees the cores free again
    return quiet, loaded


def _figure(name: str, quiet: float, loaded: float, goal: bool) -> Figure:
    return Figure(
        BENCHMARK,
        name,
        loaded / quiet,
        "the same on the quiet machine",
        goal_max=2.0 if goal else None,
        detail=f"{loaded * 1e3:.1f} ms loaded vs {quiet * 1e3:.1f} ms quiet",
    )


def _ms_figures(size: dict[str, int], repeats: int) -> list[Figure]:
    codes = random_topk_codes(size["n_images"], size["n_neurons"], size["k"])
    embeddings = torch.randn(size["n_images"], size["d_embed"])

    def score() -> None:
        monosemanticity_score(codes, embeddings)

    shape = f"{size['n_images']:,} images x {size['n_neurons']:,} latents"
    governed = _quiet_and_loaded(score, repeats, 1.0)
    os.environ[ENVIRONMENT_SWITCH] = "0"
    try:
        plain = _quiet_and_loaded(score, repeats, 1.0)
    finally:
        del os.environ[ENVIRONMENT_SWITCH]
    return [
        _figure(f"MS {shape}, loaded / quiet (thread governor)", *governed, goal=True),
        _figure(f"MS {shape}, loaded / quiet (SAE_VLM_ADAPTIVE_THREADS=0)", *plain, goal=False),
    ]


def _training_figures(quick: bool) -> list[Figure]:
    d_in, d_sae, batch_size = (256, 2048, 1024) if quick else (768, 6144, 4096)
    torch.manual_seed(0)
    batch = torch.randn(batch_size, d_in)
    sae = PaperMatryoshkaBatchTopKTrainingSAE(
        PaperMatryoshkaBatchTopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=K)
    )
    trainer = _trainer(sae, batch_size, paper_learning_rate(d_sae))
    prepare_paper_trainer(trainer, scaling_factor=None, warmup_steps=10)
    step = _stepper(trainer, batch)
    governor = ThreadGovernor()

    def governed_step() -> None:
        with governor.unit():
            step()

    shape = f"d_in {d_in}, x{d_sae // d_in}, batch {batch_size}"
    return [
        _figure(
            f"paper step {shape}, loaded / quiet (adaptive_threads=True)",
            *_quiet_and_loaded(governed_step, 5, 1.5),
            goal=True,
        ),
        _figure(
            f"paper step {shape}, loaded / quiet (default: fixed threads)",
            *_quiet_and_loaded(step, 5, 1.5),
            goal=False,
        ),
    ]


def run(quick: bool) -> list[Figure]:
    return [
        *_ms_figures(NAIVE_QUICK if quick else NAIVE, repeats=30),
        *_ms_figures(SCALE_QUICK if quick else SCALE, repeats=3),
        *_training_figures(quick),
    ]
