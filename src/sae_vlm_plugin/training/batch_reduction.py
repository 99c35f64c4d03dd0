"""The batch-wide quantities of a BatchTopK step, on one process or across data-parallel ranks.

A paper training step needs four things that depend on the *whole* batch, not on each input
alone: the BatchTopK selection (the ``k * B`` largest entries of the batch), which latents fired,
the geometric median of the first batch (``b_dec``'s initial value) and the variance of the
residual (the auxiliary loss' denominator). ``LocalBatch`` computes them on a batch held by one
process. ``ShardedBatch`` computes the same values when the batch of ``B`` rows is split into
equal shards of ``B / N`` rows over the ``N`` ranks of a ``torch.distributed`` group, so that
``N`` ranks with ``B / N`` rows each train the SAE one process trains with ``B`` rows:

- selection: each rank proposes its own ``k * B`` largest positive entries (the global top set
  can lie on one rank); ranks all-gather those values, every rank takes the same top ``k * B``
  of the ``N * k * B`` proposals and keeps the ones it proposed (``k * B`` floats per rank);
- fired latents: an all-reduce (max) of each rank's ``(d_sae,)`` firing mask;
- geometric median: of the all-gathered first batch (once per run);
- residual variance ``mean_b ||e_b - mean(e)||^2``: two all-reduces (the sum of ``e``, then
  the sum of squared deviations), the same two-pass formula as one process.

The rest of a step is per input (reconstruction errors, auxiliary top-k over dead latents) or a
mean over inputs, whose gradient DistributedDataParallel's averaging makes global.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from sae_vlm_plugin.training.geometric_median import geometric_median
from sae_vlm_plugin.training.selection import batch_topk


class LocalBatch:
    """The whole batch is on this process."""

    world_size = 1

    def topk(
        self, pre_flat: torch.Tensor, n_keep: int, row_width: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Ascending flat indices and values of the batch's ``n_keep`` largest positive entries
        (``selection.batch_topk``), and the smallest of them (0 if there are none)."""
        kept, values = batch_topk(pre_flat, n_keep, row_width)
        smallest = values.min() if values.numel() else values.new_zeros(())
        return kept, values, smallest

    def fired(self, mask: torch.Tensor) -> torch.Tensor:
        """Latents that fired on any input of the batch, given this process' ``(d_sae,)`` mask."""
        return mask

    def geometric_median(self, x: torch.Tensor) -> torch.Tensor:
        return geometric_median(x)

    def residual_variance(self, residual: torch.Tensor) -> torch.Tensor:
        """``mean_b ||e_b - mean_b' e_b'||^2`` over the batch's residuals ``e`` ``(B, d_in)``."""
        return (residual - residual.mean(dim=0)).pow(2).sum(dim=-1).mean()


class ShardedBatch(LocalBatch):
    """The batch is split into equal row shards over the ranks of ``group`` (None: the default
    group); every method returns the value ``LocalBatch`` returns on the concatenated batch,
    up to floating-point reduction order, and the same value on every rank."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        if not dist.is_initialized():
            raise RuntimeError(
                "ShardedBatch needs an initialised torch.distributed process group "
                "(launch with torchrun and call torch.distributed.init_process_group)"
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

    def topk(
        self, pre_flat: torch.Tensor, n_keep: int, row_width: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's share of the global top ``n_keep`` positive entries (ascending local flat
        indices and values) and the smallest entry kept on any rank (0 if none)."""
        kept, values = batch_topk(pre_flat, n_keep, row_width)
        descending = values.argsort(descending=True)
        kept, values = kept[descending], values[descending]
        proposals = values.new_zeros(n_keep)  # padding zeros are never kept: only positives are
        proposals[: values.numel()] = values
        gathered = [torch.empty_like(proposals) for _ in range(self.world_size)]
        dist.all_gather(gathered, proposals, group=self.group)
        top = torch.cat(gathered).topk(n_keep, sorted=False)
        positive = top.values > 0
        owners = top.indices[positive] // n_keep
        n_mine = int((owners == self.rank).sum())
        smallest = top.values[positive].min() if positive.any() else values.new_zeros(())
        ascending = kept[:n_mine].argsort()
        return kept[:n_mine][ascending], values[:n_mine][ascending], smallest

    def fired(self, mask: torch.Tensor) -> torch.Tensor:
        flags = mask.to(torch.uint8)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.group)
        return flags.bool()

    def geometric_median(self, x: torch.Tensor) -> torch.Tensor:
        shards = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(shards, x.contiguous(), group=self.group)
        return geometric_median(torch.cat(shards))

    def residual_variance(self, residual: torch.Tensor) -> torch.Tensor:
        n_rows = residual.shape[0] * self.world_size
        total = residual.sum(dim=0)
        dist.all_reduce(total, group=self.group)
        squared = (residual - total / n_rows).pow(2).sum()
        dist.all_reduce(squared, group=self.group)
        return squared / n_rows
