"""Data-parallel SAE training with ``torch.distributed`` (launched by ``torchrun``).

Every rank holds a replica of each SAE and trains it on its equal share of every global batch
(rows ``[r * B / N, (r + 1) * B / N)`` of rank r); PyTorch's ``DistributedDataParallel``
averages the gradients during the backward pass, and the paper SAEs take their batch-wide steps
over the global batch (``batch_reduction.ShardedBatch``). Averaged gradients of per-rank means
are the gradient of the global mean, so N ranks with B / N rows train the SAE one process trains
with B rows, up to floating-point reduction order.

Rank 0 writes the logs, checkpoints and exports; every rank reads checkpoints from the run
directory, which must therefore be on a filesystem all ranks see.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sae_vlm_plugin.distributed import DataParallel


class _TrainingStep(nn.Module):
    """``forward`` is the SAE's own ``training_forward_pass``, for DDP to wrap."""

    def __init__(self, sae: nn.Module) -> None:
        super().__init__()
        self.sae = sae

    def forward(self, step_input: Any) -> Any:
        return type(self.sae).training_forward_pass(self.sae, step_input)  # type: ignore[attr-defined]


def wrap_for_ddp(trainer: Any) -> None:
    """Train ``trainer.sae`` data-parallel from its next step on.

    The SAE shards its batch-wide steps over the ranks (``shard_batches_over``), and its
    ``training_forward_pass`` - the call SAELens' ``SAETrainer`` makes before
    ``loss.backward()`` - goes through a ``DistributedDataParallel`` module, so that the
    gradients are averaged over the ranks during the backward pass (before the trainer clips
    them and steps Adam). DDP's construction also copies rank 0's parameters and buffers to
    every rank. Only the paper architectures keep BatchTopK exact across ranks."""
    sae = trainer.sae
    if not hasattr(sae, "shard_batches_over"):
        raise ValueError(
            f"{type(sae).__name__} cannot train data-parallel: its BatchTopK would select per "
            "rank, not over the global batch. Valid architectures under torchrun: "
            "paper_batchtopk, paper_matryoshka_batchtopk"
        )
    sae.shard_batches_over(None)
    device_ids = [sae.device] if sae.device.type == "cuda" else None
    ddp = DistributedDataParallel(_TrainingStep(sae), device_ids=device_ids, **_NO_BUFFER_SYNC)
    # An instance attribute (not a submodule: DDP holds the SAE, so that would be a cycle).
    object.__setattr__(sae, "training_forward_pass", ddp)


def consolidate_sparsity(parallel: DataParallel, trainer: Any) -> None:
    """Gather SAELens' running sparsity statistics (firing counts, forward passes since each
    latent fired) onto rank 0, so that what it logs and saves (the sparsity window, the
    SAE's ``l0`` and dead-latent metadata, checkpoints) covers the global batches. The
    other ranks keep counting from zero. Call it on every rank before those are read."""
    if not parallel.enabled:
        return
    counts = torch.cat(
        [
            trainer.act_freq_scores.double(),
            torch.tensor([trainer.n_frac_active_samples], dtype=torch.float64),
        ]
    ).to(trainer.act_freq_scores.device)
    dist.all_reduce(counts)
    dist.all_reduce(trainer.n_forward_passes_since_fired, op=dist.ReduceOp.MIN)
    if parallel.is_main:
        trainer.act_freq_scores.copy_(counts[:-1])
        trainer.n_frac_active_samples = int(counts[-1].item())
    else:
        drop_sparsity_counts(parallel, trainer)


def drop_sparsity_counts(parallel: DataParallel, trainer: Any) -> None:
    """Zero a non-main rank's running firing counts (after it restored rank 0's checkpoint,
    which holds the consolidated counts)."""
    if not parallel.is_main:
        trainer.act_freq_scores.zero_()
        trainer.n_frac_active_samples = 0


_NO_BUFFER_SYNC: dict[str, Any] = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else {"broadcast_buffers": False}  # torch before forward_sync_buffers
)
"""DDP without a buffer broadcast before every forward: the SAE's buffers (threshold, dead-latent
counters) are updated from the global batch and so stay equal on every rank."""
