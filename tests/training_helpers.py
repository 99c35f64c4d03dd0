"""Shared builders for the training tests and benchmarks: synthetic activations, SAEs, trainers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.training.sae_trainer import SAETrainer

from sae_vlm_plugin.training import (
    PaperBatchTopKTrainingSAE,
    PaperBatchTopKTrainingSAEConfig,
    PaperMatryoshkaBatchTopKTrainingSAE,
    PaperMatryoshkaBatchTopKTrainingSAEConfig,
)


def synthetic_activations(
    n_batches: int,
    batch_size: int,
    d_in: int,
    *,
    seed: int = 0,
    n_atoms: int = 48,
    atoms_per_input: int = 3,
    dtype: torch.dtype = torch.float64,
) -> list[torch.Tensor]:
    """Batches of sparse combinations of fixed random directions, plus noise and an offset:
    data with features to find, a mean to subtract and a norm far from 1."""
    generator = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d_in, generator=generator, dtype=dtype)
    offset = 3.0 * torch.randn(d_in, generator=generator, dtype=dtype)
    batches = []
    for _ in range(n_batches):
        scores = torch.rand(batch_size, n_atoms, generator=generator, dtype=dtype)
        chosen = scores.topk(atoms_per_input, dim=1).indices
        magnitudes = torch.rand(batch_size, atoms_per_input, generator=generator, dtype=dtype)
        codes = torch.zeros(batch_size, n_atoms, dtype=dtype).scatter(1, chosen, 1 + magnitudes)
        noise = 0.05 * torch.randn(batch_size, d_in, generator=generator, dtype=dtype)
        batches.append(7.0 * (codes @ atoms) + offset + noise)
    return batches


def paper_sae(
    architecture: str, *, d_in: int, d_sae: int, k: int, **overrides: Any
) -> PaperBatchTopKTrainingSAE:
    """A paper training SAE of the named architecture ("paper_batchtopk" or
    "paper_matryoshka_batchtopk")."""
    if architecture == "paper_batchtopk":
        cfg = PaperBatchTopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, **overrides)
        return PaperBatchTopKTrainingSAE(cfg)
    matryoshka_cfg = PaperMatryoshkaBatchTopKTrainingSAEConfig(
        d_in=d_in, d_sae=d_sae, k=k, **overrides
    )
    return PaperMatryoshkaBatchTopKTrainingSAE(matryoshka_cfg)


def make_trainer(
    sae: torch.nn.Module,
    batches: Iterator[torch.Tensor],
    *,
    n_steps: int,
    batch_size: int,
    lr: float,
) -> SAETrainer:
    """SAELens' SAETrainer for ``n_steps`` steps, constant lr, no wandb, no checkpoints."""
    cfg = SAETrainerConfig(
        total_training_samples=n_steps * batch_size,
        train_batch_size_samples=batch_size,
        lr=lr,
        lr_end=lr,
        device="cpu",
        logger=LoggingConfig(log_to_wandb=False),
    )
    return SAETrainer(cfg, sae, batches, evaluator=None)  # type: ignore[arg-type]


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny shapes gain nothing from threads, and on a shared CPU each op's thread barrier can
    wait for a time slice; run a test on one thread and restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
