"""Data-parallel training: the same run on 1 process and on 2 torchrun processes (gloo).

A paper Matryoshka-BatchTopK SAE (d_in 768 -> d_sae 6144, k 20, global batch 4096, 24 steps)
trains from a synthetic fp16 cache with ``VisionSAESweepRunner`` under each launch; every
worker times ``run()`` between two barriers, after its imports (so process start-up is not
counted; the scaling estimate on 2 batches and the export are). Launches are interleaved
(1 process, 2 processes, 1 process with 2 threads, ...) and each figure is a ratio of medians:

- ``2 ranks x 1 thread / 1 process x 1 thread``: per-process scaling (ideal 0.5); what N GPUs
  would give over one, up to the interconnect;
- ``2 ranks x 1 thread / 1 process x 2 threads``: what this 2-core machine gains over letting
  one process use both cores (no goal: intra-op threading also scales).

``quick``: d_in 64, batch 256, 6 steps, one launch of each (a smoke run, no goals).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_extraction import _synthetic_cache
from harness import Figure

WORKER = """
import json, sys, time
from sae_vlm_plugin.distributed import DataParallel, process_group_from_environment
from sae_vlm_plugin.training.runner_config import VisionSAERunnerConfig
from sae_vlm_plugin.training.sweep import VisionSAESweepRunner

configs = [VisionSAERunnerConfig(**values) for values in json.loads(sys.argv[1])]
with process_group_from_environment("cpu"):
    parallel = DataParallel.current()
    runner = VisionSAESweepRunner(configs, progress=False)
    parallel.barrier()
    start = time.perf_counter()
    runner.run()
    parallel.barrier()
    if parallel.is_main:
        print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def launch(configs: list[dict], processes: int, threads: int) -> float:
    """Seconds the workers spent in ``VisionSAESweepRunner(configs).run()`` (rank 0's clock)."""
    script = [sys.executable, "-c", WORKER, json.dumps(configs)]
    if processes > 1:
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
        if torchrun is None:
            raise RuntimeError("torchrun is not installed next to this interpreter")
        script = [torchrun, "--standalone", f"--nproc-per-node={processes}", "--no-python", *script]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(script, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark worker failed:\n{done.stderr[-3000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])


def run(quick: bool) -> list[Figure]:
    d_in, batch, steps = (64, 256, 6) if quick else (768, 4096, 24)
    repeats = 1 if quick else 3
    launches = {"1x1": (1, 1), "2x1": (2, 1), "1x2": (1, 2)}
    samples: dict[str, list[float]] = {name: [] for name in launches}
    with tempfile.TemporaryDirectory() as tmp:
        cache = _synthetic_cache(str(Path(tmp) / "cache"), 16 * batch, d_in)
        for repeat in range(repeats):
            for name, (processes, threads) in launches.items():
                config = {
                    "cached_activations_path": str(cache.path),
                    "hook_name": "blocks.0.hook_resid_post",
                    "expansion_factor": 8,
                    "train_batch_size_tokens": batch,
                    "training_tokens": steps * batch,
                    "lr_warm_up_steps": 1,
                    "n_batches_for_norm_estimate": 2,
                    "checkpoint_every_steps": 0,
                    "logger": {"wandb_log_frequency": steps},
                    "checkpoint_path": str(Path(tmp) / f"{name}-{repeat}"),
                }
                samples[name].append(launch([config], processes, threads))
    median = {name: statistics.median(times) for name, times in samples.items()}
    size = f"d_in {d_in} x8, batch {batch}, {steps} steps"
    return [
        Figure(
            "scaling_training",
            "2 ranks x 1 thread vs 1 process x 1 thread",
            median["2x1"] / median["1x1"],
            "1 process, 1 thread",
            goal_max=None if quick else 0.65,
            detail=f"ideal 0.5; {size}; {median['1x1']:.1f} s vs {median['2x1']:.1f} s",
        ),
        Figure(
            "scaling_training",
            "2 ranks x 1 thread vs 1 process x 2 threads",
            median["2x1"] / median["1x2"],
            "1 process, 2 threads",
            detail=f"{size}; {median['1x2']:.1f} s vs {median['2x1']:.1f} s",
        ),
    ]
