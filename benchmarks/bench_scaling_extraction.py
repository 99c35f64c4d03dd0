"""Distributed extraction: ``sae-vlm extract`` under ``torchrun --nproc-per-node 2`` (gloo) against
one process, on the same images and the same checkpoint.

Each run is the command a user types, started as a subprocess into a fresh cache directory and
timed by its whole wall clock (interpreter start, imports, model load, extraction, exit): nothing
is subtracted. The three set-ups run round-robin (as ``harness.time_side_by_side`` does, but
timing the subprocess alone), median of 3 runs each (``quick``: 1):

- 1 process x 1 thread and 2 processes x 1 thread (``OMP_NUM_THREADS=1``/``MKL_NUM_THREADS=1``
  in both): the per-process scaling, ideal 0.5; the extraction phase (below) is held to
  <= 0.65, the wall clock (with a fixed start-up of a few seconds per launch, which an
  ImageNet-size extraction amortises) is reported;
- 1 process x 2 threads (``OMP_NUM_THREADS=2``) against the same 2 x 1 run: what running
  ``torchrun`` gains on a 2-core machine over letting torch use both cores in one process.
  Reported without a goal.

The details split each wall clock with the timestamps of files the extraction writes: the cache
creates ``images.json`` once, before the first shard (after start-up and model load), and writes
``cache.json`` last, when it marks the cache complete. "start-up" is launch -> ``images.json``
as a share of the wall clock; "extraction phase" is ``images.json`` -> final ``cache.json``
(under ``torchrun`` it includes rank 0 waiting for rank 1 to finish starting).

Model: a random-weight CLIP ViT-B/16 vision tower at 224 px (saved with ``save_pretrained`` and
a ``CLIPImageProcessor``), the CLS token of its last block, 48 synthetic PNG images in 4 shards
of 12 (2 per rank), batch 12. ``quick``: a tiny CLIP at 64 px on 8 images, a smoke run in which
start-up dominates, so its figures carry no goal.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from harness import Figure

from sae_vlm_plugin import ActivationCache
from sae_vlm_plugin.tiny import models as tm

BENCHMARK = "scaling_extraction"


@dataclass(frozen=True)
class Size:
    """What one run extracts: a CLIP vision tower's shape and the image set."""

    hidden: int
    layers: int
    heads: int
    image_size: int
    n_images: int
    images_per_shard: int

    @property
    def hook(self) -> str:
        return f"blocks.{self.layers - 1}.hook_resid_post"

    @property
    def describe(self) -> str:
        return (
            f"CLIP width {self.hidden} x {self.layers} blocks, {self.image_size} px, random; "
            f"{self.n_images} images, {self.n_images // self.images_per_shard} shards"
        )


FULL = Size(hidden=768, layers=12, heads=12, image_size=224, n_images=48, images_per_shard=12)
QUICK = Size(hidden=64, layers=4, heads=4, image_size=64, n_images=8, images_per_shard=2)


@dataclass(frozen=True)
class Phases:
    """One run's wall clock and the part of it spent before / in the extraction."""

    wall: float
    startup: float
    extraction: float


def _save_checkpoint(size: Size, directory: Path) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=size.hidden,
        intermediate_size=4 * size.hidden,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        image_size=size.image_size,
        patch_size=16,
    )
    torch.manual_seed(0)
    return tm.save_clip_checkpoint(CLIPVisionModel(config).eval(), directory)


def _write_images(size: Size, directory: Path) -> Path:
    directory.mkdir()
    images, _ = tm.synthetic_images(size.n_images, size=size.image_size)
    for i, image in enumerate(images):
        image.save(directory / f"{i:04d}.png")
    return directory


def _timed_run(command: list[str], threads: int, out: Path, n_images: int) -> Phases:
    """Run ``command`` (which writes a cache to ``out``) with ``threads`` torch threads per
    process; its wall clock split at the cache's first and last file writes."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    launched = time.time()
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    cache = ActivationCache(out)
    if not cache.complete or cache.n_rows() != n_images:
        raise RuntimeError(f"{out} is not a complete cache of {n_images} rows")
    begun = (out / "images.json").stat().st_mtime
    ended = (out / "cache.json").stat().st_mtime
    return Phases(wall=wall, startup=(begun - launched) / wall, extraction=ended - begun)


def run(quick: bool) -> list[Figure]:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        raise RuntimeError("torchrun is not installed next to this interpreter")
    size = QUICK if quick else FULL
    batch_size = size.images_per_shard
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoint = _save_checkpoint(size, root / "clip")
        images = _write_images(size, root / "images")
        extract = [
            "-m",
            "sae_vlm_plugin.cli",
            "extract",
            "--model",
            str(checkpoint),
            "--hook",
            size.hook,
            "--images",
            str(images),
            "--batch-size",
            str(batch_size),
            "--images-per-shard",
            str(size.images_per_shard),
        ]
        launchers = {
            "1x1": ([sys.executable], 1),
            "2x1": (
                [torchrun, "--standalone", "--nproc-per-node", "2", "--no-python", sys.executable],
                1,
            ),
            "1x2": ([sys.executable], 2),
        }
        phases: dict[str, list[Phases]] = {name: [] for name in launchers}
        for repeat in range(1 if quick else 3):  # round-robin, so noise hits every set-up
            for name, (launcher, threads) in launchers.items():
                out = root / f"{name}_{repeat}"
                command = [*launcher, *extract, "--out", str(out)]
                phases[name].append(_timed_run(command, threads, out, size.n_images))

    def median(name: str, field: str) -> float:
        return statistics.median(getattr(p, field) for p in phases[name])

    def split(name: str) -> str:
        return (
            f"{median(name, 'wall'):.1f} s, start-up {median(name, 'startup'):.0%}, "
            f"extraction phase {median(name, 'extraction'):.2f} s"
        )

    setting = f"{size.describe}, batch {batch_size}, median of {len(phases['1x1'])}"
    return [
        Figure(
            BENCHMARK,
            "2 processes x 1 thread vs 1 process x 1 thread (extraction phase)",
            median("2x1", "extraction") / median("1x1", "extraction"),
            "1 process x 1 thread, same images",
            goal_max=None if quick else 0.65,
            detail=f"ideal 0.5; {setting}",
        ),
        Figure(
            BENCHMARK,
            "2 processes x 1 thread vs 1 process x 1 thread (wall)",
            median("2x1", "wall") / median("1x1", "wall"),
            "1 process x 1 thread, same images",
            detail=f"start-up included; 2x1: {split('2x1')}; 1x1: {split('1x1')}",
        ),
        Figure(
            BENCHMARK,
            "2 processes x 1 thread vs 1 process x 2 threads (wall)",
            median("2x1", "wall") / median("1x2", "wall"),
            "1 process x 2 threads, same images",
            detail=f"extraction phase only "
            f"{median('2x1', 'extraction') / median('1x2', 'extraction'):.2f}; "
            f"1x2: {split('1x2')}; {setting}",
        ),
    ]
