"""Where this process stands in a ``torch.distributed`` run (launched by ``torchrun``), and the
few collectives the plugin needs. Imports only torch: extraction uses it without SAELens."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


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
            local_rank = os.environ.get("LOCAL_RANK")
            return f"cuda:{local_rank if local_rank is not None else torch.cuda.current_device()}"
        return device

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.world_size:
            raise ValueError(
                f"batch_size={batch_size} does not split evenly over {self.world_size} ranks; "
                f"choose a multiple of {self.world_size}"
            )

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


def _collective_device() -> torch.device:
    """Where a tensor made for a collective must live: NCCL reduces CUDA tensors only."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _is_scalar(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, int | float) and not isinstance(value, bool)
