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
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@contextmanager
def process_group_from_environment(device: str | None) -> Iterator[str | None]:
    """Under ``torchrun`` (``WORLD_SIZE > 1``), initialise the default process group for the
    block and destroy it afterwards: NCCL when ``device`` is a CUDA device (or None with CUDA
    available), else gloo. Yields the device this process should use: ``cuda:LOCAL_RANK`` for
    None or a bare ``cuda``, else ``device``. Outside torchrun, or with a group already
    initialised, it only yields ``device``."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield device
        return
    use_cuda = device.startswith("cuda") if device else torch.cuda.is_available()
    if use_cuda:
        if device in (None, "cuda"):
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        yield device
    finally:
        dist.destroy_process_group()


class _TrainingStep(nn.Module):
    """``forward`` is the SAE's own ``training_forward_pass``, for DDP to wrap."""

    def __init__(self, sae: nn.Module) -> None:
        super().__init__()
        self.sae = sae

    def forward(self, step_input: Any) -> Any:
        return type(self.sae).training_forward_pass(self.sae, step_input)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class DataParallel:
    """This process' place in a data-parallel run: ``rank`` of ``world_size`` (1 outside
    ``torch.distributed``)."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> DataParallel:
        """The default process group's rank and size if it is initialised, else one process."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def device_for(self, device: str) -> str:
        """The device this rank trains on: a bare ``cuda`` under data parallelism becomes this
        process' GPU (``cuda:LOCAL_RANK``, as torchrun numbers them); anything else is kept."""
        if self.enabled and device == "cuda":
            return f"cuda:{os.environ.get('LOCAL_RANK', torch.cuda.current_device())}"
        return device

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.world_size:
            raise ValueError(
                f"batch_size={batch_size} does not split evenly over {self.world_size} ranks; "
                f"choose a multiple of {self.world_size}"
            )

    def wrap(self, trainer: Any) -> None:
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

    def mean_over_ranks(self, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` with every numeric scalar replaced by its mean over the ranks (the other
        entries are this rank's). Every rank must call it with the same keys."""
        if not self.enabled:
            return values
        keys = sorted(k for k, v in values.items() if _is_scalar(v))
        totals = torch.tensor(
            [float(values[k]) for k in keys], dtype=torch.float64, device=_collective_device()
        )
        dist.all_reduce(totals)
        means = dict(zip(keys, (totals / self.world_size).tolist(), strict=True))
        return {k: means.get(k, v) for k, v in values.items()}

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks (float64)."""
        return float(self.mean_over_ranks({"value": value})["value"])

    def gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Every rank's ``(n_r, d)`` rows, concatenated in rank order (``n_r`` may differ)."""
        if not self.enabled:
            return rows
        device = rows.device if rows.device.type != "cpu" else _collective_device()
        rows = rows.to(device)
        counts = torch.tensor([rows.shape[0]], device=device)
        all_counts = [torch.empty_like(counts) for _ in range(self.world_size)]
        dist.all_gather(all_counts, counts)
        sizes = [int(c.item()) for c in all_counts]
        padded = rows.new_zeros(max(sizes), rows.shape[1])
        padded[: rows.shape[0]] = rows
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(gathered, padded)
        return torch.cat([part[:size] for part, size in zip(gathered, sizes, strict=True)])

    def consolidate_sparsity(self, trainer: Any) -> None:
        """Gather SAELens' running sparsity statistics (firing counts, forward passes since each
        latent fired) onto rank 0, so that what it logs and saves (the sparsity window, the
        SAE's ``l0`` and dead-latent metadata, checkpoints) covers the global batches. The
        other ranks keep counting from zero. Call it on every rank before those are read."""
        if not self.enabled:
            return
        counts = torch.cat(
            [
                trainer.act_freq_scores.double(),
                torch.tensor([trainer.n_frac_active_samples], dtype=torch.float64),
            ]
        ).to(trainer.act_freq_scores.device)
        dist.all_reduce(counts)
        dist.all_reduce(trainer.n_forward_passes_since_fired, op=dist.ReduceOp.MIN)
        if self.is_main:
            trainer.act_freq_scores.copy_(counts[:-1])
            trainer.n_frac_active_samples = int(counts[-1].item())
        else:
            self.drop_sparsity_counts(trainer)

    def drop_sparsity_counts(self, trainer: Any) -> None:
        """Zero a non-main rank's running firing counts (after it restored rank 0's checkpoint,
        which holds the consolidated counts)."""
        if not self.is_main:
            trainer.act_freq_scores.zero_()
            trainer.n_frac_active_samples = 0

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object), on every rank."""
        if not self.enabled:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


_NO_BUFFER_SYNC: dict[str, Any] = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else {"broadcast_buffers": False}  # torch before forward_sync_buffers
)
"""DDP without a buffer broadcast before every forward: the SAE's buffers (threshold, dead-latent
counters) are updated from the global batch and so stay equal on every rank."""


def _collective_device() -> torch.device:
    """Where a tensor made for a collective must live: NCCL reduces CUDA tensors only."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _is_scalar(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, int | float) and not isinstance(value, bool)
