"""What the demo's paths share: its configuration, defaults, and the helpers every path uses
(label embeddings, training one SAE, chance purity, number formatting)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sae_vlm_plugin.demo.findings import concept_purity
from sae_vlm_plugin.metrics.evaluation import TOP_IMAGES

if TYPE_CHECKING:
    from sae_vlm_plugin.training.runner_config import VisionSAERunnerConfig

DEFAULT_N_IMAGES = 810
DEFAULT_WORLD_IMAGES = 10_000
DEFAULT_STEPS = 600
WORLD_STEPS = 5000
"""The trained world's default: the inference threshold is an EMA of the batch's smallest kept
activation with decay 0.999 (a memory of about 1000 steps) from step ``steps // 5``, so 600
steps leave it far from converged; 5000 take under half a minute here."""
DEFAULT_IMAGE_SIZE = 32


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs on and where it writes."""

    out_dir: Path
    """Output directory (cache, run, evaluation and ``summary.json``)."""
    model: str | None = None
    """Hub id / path / ``open_clip:...``; None: the toy CLIP (or, with ``random``, the small
    random CLIP)."""
    images: str | None = None
    """Images in any form ``open_images`` takes (a folder, tar shards, ``hf:NAME`` ...); None
    generates toy-world (or, with ``random``, synthetic concept) images."""
    images_options: dict[str, Any] = field(default_factory=dict)
    """How to read ``images``: ``open_image_source``'s ``split``, ``image_column``,
    ``label_column``."""
    random: bool = False
    """Run on random weights and synthetic concept images instead of the trained world."""
    n_images: int | None = None
    """Images to generate (ignored with ``images``); default 10,000 world images to train the
    SAEs on (2000 others measure them) / 810 synthetic."""
    seed: int = 10
    """Seed of the generated world images; the toy models were trained and held out on seeds
    0-3, so the default images are new to them."""
    layer: int | None = None
    """Block to read; None takes the second-to-last (LLaVA's choice)."""
    scoring_encoder: str | None = None
    """The image encoder MS scores with (``"dinov2"``, ``"clip"``, a hub id or a local model).
    None: DINOv2 for an image folder, label embeddings for generated images. The trained world
    scores with the toy CLIP's own embeddings and refuses another."""
    expansion_factor: int = 4
    k: int = 8
    training_steps: int | None = None
    """SAE training steps; default ``WORLD_STEPS`` on the trained world, 600 otherwise."""
    batch_size: int = 128
    seeds: int = 5
    """SAE seeds each trained-world finding is measured over (0 .. seeds-1)."""
    progress: bool = True


def label_embeddings(attributes: Sequence[tuple[str, ...]]) -> torch.Tensor:
    """Unit vectors whose cosine is the fraction of attribute values two items share."""
    n_attributes = len(attributes[0])
    vocab = [sorted({item[a] for item in attributes}) for a in range(n_attributes)]
    offsets = [sum(len(v) for v in vocab[:a]) for a in range(n_attributes)]
    embeddings = torch.zeros(len(attributes), sum(len(v) for v in vocab))
    for row, item in enumerate(attributes):
        for a, value in enumerate(item):
            embeddings[row, offsets[a] + vocab[a].index(value)] = 1.0
    return embeddings / n_attributes**0.5


def demo_sae_config(
    model: Any,
    images: Any,
    hook: str,
    out: Path,
    config: DemoConfig,
    tokens: str,
    default_steps: int = DEFAULT_STEPS,
    seed: int = 0,
    run_name: str = "run",
) -> VisionSAERunnerConfig:
    """Cache ``tokens`` of ``hook`` under ``out/cache`` (once: a finished cache is reused) and
    return the run config of the paper's Matryoshka-BatchTopK SAE with ``seed`` on them, in
    ``out/run_name``. The steps run on fewer threads while other processes share the cores
    (``adaptive_threads``: the small SAE's steps are many short ops, which on shared cores wait
    at every op for a parked thread); on a quiet machine, or with
    ``SAE_VLM_ADAPTIVE_THREADS=0``, on all of the caller's threads, bit for bit as before."""
    from sae_vlm_plugin.cache import extract_to_cache
    from sae_vlm_plugin.training.runner_config import VisionLoggingConfig, VisionSAERunnerConfig

    cache = extract_to_cache(
        model, images, hook, out / "cache", tokens=tokens, progress=config.progress
    )
    steps = config.training_steps or default_steps
    return VisionSAERunnerConfig(
        cached_activations_path=str(cache.path),
        hook_name=hook,
        architecture="paper_matryoshka_batchtopk",
        expansion_factor=config.expansion_factor,
        k=config.k,
        checkpoint_path=str(out / run_name),
        seed=seed,
        training_tokens=config.batch_size * steps,
        train_batch_size_tokens=config.batch_size,
        lr_warm_up_steps=steps // 10,
        threshold_start_step=steps // 5,
        dead_after_inputs=config.batch_size * steps // 4,
        n_batches_for_norm_estimate=4,
        logger=VisionLoggingConfig(wandb_log_frequency=50, eval_every_n_wandb_logs=20),
        checkpoint_every_steps=0,
        adaptive_threads=True,
    )


def train_demo_sae(
    model: Any,
    images: Any,
    hook: str,
    out: Path,
    config: DemoConfig,
    tokens: str,
    default_steps: int = DEFAULT_STEPS,
    seed: int = 0,
    run_name: str = "run",
) -> tuple[Any, VisionSAERunnerConfig]:
    """Train the SAE of ``demo_sae_config`` (a run ``train_side_by_side`` finished is loaded as
    it is); returns ``(sae, runner config)``."""
    from sae_vlm_plugin.training.runner import VisionSAETrainingRunner

    run_config = demo_sae_config(
        model, images, hook, out, config, tokens, default_steps, seed, run_name
    )
    return VisionSAETrainingRunner(run_config, progress=config.progress).run(), run_config


def train_side_by_side(run_configs: Sequence[VisionSAERunnerConfig], progress: bool) -> None:
    """Train the runs of ``run_configs`` in worker processes, one per core, each on
    ``cores // workers`` threads: the demo's SAEs are small, and their steps are short ops that
    two threads do not speed up, so two runs side by side take the time of about one. A run
    trains to the same weights, bit for bit, on one thread as on two (tested; its ops are too
    small to be split), and the demo then loads each finished run."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    workers = max(1, min(len(run_configs), os.cpu_count() or 1))
    threads = max(1, torch.get_num_threads() // workers)
    context = multiprocessing.get_context("spawn")
    bar = tqdm(
        total=len(run_configs), desc="train SAEs side by side", unit="SAE", disable=not progress
    )
    with bar, ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(_train_run, c.to_dict(), threads) for c in run_configs]
        for future in as_completed(futures):
            future.result()
            bar.update(1)


def _train_run(values: dict[str, Any], threads: int) -> None:
    """One run of ``train_side_by_side``, in a worker process."""
    from sae_vlm_plugin.training.runner import VisionSAETrainingRunner
    from sae_vlm_plugin.training.runner_config import VisionSAERunnerConfig

    torch.set_num_threads(threads)
    VisionSAETrainingRunner(VisionSAERunnerConfig.from_dict(values), progress=False).run()


def chance_purity(
    attributes: Sequence[tuple[str, ...]],
    purity: Callable[[torch.Tensor, Sequence[tuple[str, ...]]], float] = concept_purity,
) -> float:
    """``purity`` of random 16-image sets (the baseline a neuron that ignores concepts gets)."""
    generator = torch.Generator().manual_seed(0)
    sets = torch.stack(
        [torch.randperm(len(attributes), generator=generator)[:TOP_IMAGES] for _ in range(200)]
    )
    return purity(sets, attributes)


def mean_std(stats: dict[str, float]) -> str:
    """``"mean+-std"`` of a statistics dict, to 3 decimals."""
    return f"{stats['mean']:.3f}+-{stats['std']:.3f}"
