"""Sweeps: four SAEs trained in one pass over the activations against the same four trained one
at a time (``VisionSAETrainingRunner`` each), side by side, in one process.

- from images: a random ViT-B/16 CLIP (224 px, all 197 tokens) extracts on the fly; the sweep
  runs the encoder once per batch for all four SAEs, one-at-a-time runs it four times. SAEs:
  paper BatchTopK and Matryoshka at x2 and x4, k 20, batch 1024, 6 steps;
- from a cache: a synthetic fp16 cache (d_in 768), the same four SAEs at batch 4096 and 6 steps;
  here the sweep only saves the cache reads, which cost little next to training.

Each figure is sweep time / one-at-a-time time (ideal from images: (E + S) / (4 E + S) for
encoder time E and SAE time S per step). ``quick``: a tiny CLIP and d_in 64.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import Any

import torch
from bench_extraction import _clip, _synthetic_cache
from harness import Figure, time_side_by_side

from sae_vlm_plugin import VisionModel
from sae_vlm_plugin.tiny import models as tm
from sae_vlm_plugin.training.runner import VisionSAETrainingRunner
from sae_vlm_plugin.training.runner_config import VisionSAERunnerConfig
from sae_vlm_plugin.training.sweep import VisionSAESweepRunner

SAES = [
    {"architecture": architecture, "expansion_factor": expansion}
    for architecture in ("paper_batchtopk", "paper_matryoshka_batchtopk")
    for expansion in (2, 4)
]


def _candidates(data: dict[str, Any], root: Path, model: VisionModel | None) -> dict[str, Any]:
    """``sweep`` and ``one_at_a_time`` callables, each training into fresh run directories."""
    runs = itertools.count()

    def configs() -> list[VisionSAERunnerConfig]:
        run = next(runs)
        return [
            VisionSAERunnerConfig(**data, **sae, checkpoint_path=str(root / f"{run}-{i}"))
            for i, sae in enumerate(SAES)
        ]

    def sweep() -> None:
        VisionSAESweepRunner(configs(), model=model, progress=False).run()

    def one_at_a_time() -> None:
        for config in configs():
            VisionSAETrainingRunner(config, model=model, progress=False).run()

    return {"sweep": sweep, "one_at_a_time": one_at_a_time}


def run(quick: bool) -> list[Figure]:
    steps = 6
    common = {
        "k": 20,
        "lr_warm_up_steps": 1,
        "n_batches_for_norm_estimate": 1,
        "checkpoint_every_steps": 0,
        "logger": {"wandb_log_frequency": steps},
    }
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        module = _clip(quick)
        size = module.config.image_size
        images = root / "images"
        images.mkdir()
        pictures, _ = tm.synthetic_images(64, size=size)
        for index, picture in enumerate(pictures):
            picture.save(images / f"{index:03d}.png")
        model = VisionModel(module)
        image_batch = 256 if quick else 1024
        from_images = {
            **common,
            "model_name": "random-clip-vit-b16",
            "dataset_path": str(images),
            "hook_name": "blocks.5.hook_resid_post" if not quick else "blocks.1.hook_resid_post",
            "tokens": "all",
            "train_batch_size_tokens": image_batch,
            "training_tokens": steps * image_batch,
            "extraction_batch_size": 8,
            "mixing_buffer_batches": 2,
        }
        times = time_side_by_side(
            _candidates(from_images, root / "images-runs", model), repeats=1 if quick else 3
        )
        figures.append(
            Figure(
                "sweep",
                "4 SAEs in one pass vs one at a time, from images",
                times["sweep"] / times["one_at_a_time"],
                "4 separate runs",
                goal_max=None if quick else 0.5,
                detail=f"encoder once per batch instead of 4x; {times['sweep']:.1f} s vs "
                f"{times['one_at_a_time']:.1f} s",
            )
        )

        d_in, batch = (64, 256) if quick else (768, 4096)
        cache = _synthetic_cache(str(root / "cache"), 16 * batch, d_in)
        from_cache = {
            **common,
            "cached_activations_path": str(cache.path),
            "hook_name": "blocks.0.hook_resid_post",
            "train_batch_size_tokens": batch,
            "training_tokens": steps * batch,
        }
        torch.manual_seed(0)
        times = time_side_by_side(
            _candidates(from_cache, root / "cache-runs", None), repeats=1 if quick else 3
        )
        figures.append(
            Figure(
                "sweep",
                "4 SAEs in one pass vs one at a time, from a cache",
                times["sweep"] / times["one_at_a_time"],
                "4 separate runs",
                detail=f"only cache reads are shared; {times['sweep']:.1f} s vs "
                f"{times['one_at_a_time']:.1f} s",
            )
        )
    return figures
