"""The top-k activating images of every neuron (the grids of the paper's user study, k = 16).

Streams over batches in image order and keeps, per neuron, the ``k`` largest activations seen
so far; a sparse batch is reduced through its stored entries only, so nothing of size
``n_images x n_neurons`` is ever built for SAE codes.
"""

# jaxtyping shape strings such as "n_images k" are not forward references.

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sae_vlm_plugin.metrics.codes import (
    Activations,
    SparseEntries,
    iter_batches,
    to_dense_or_entries,
)

if TYPE_CHECKING:
    from jaxtyping import Float, Int

__all__ = ["TopActivations", "top_activations"]

_BLOCK_ELEMENTS = 2**22
"""Activations per dense block (image rows x neurons) sorted at once."""


@dataclass(frozen=True)
class TopActivations:
    """The ``k`` most activating images of each neuron, best first.

    Order: by activation, descending; equal activations by image index, ascending. Neurons
    with fewer than ``k`` candidate images are padded with value NaN and index -1.
    """

    values: Float[Tensor, "n_neurons k"]
    """Activations (float64), NaN where padded."""
    indices: Int[Tensor, "n_neurons k"]
    """Image indices (position in the activation stream), -1 where padded."""
    n_images: int
    """Images seen."""

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    @property
    def n_neurons(self) -> int:
        return int(self.indices.shape[0])

    @property
    def counts(self) -> Int[Tensor, " n_neurons"]:
        """Candidate images found per neuron (``k`` unless the neuron rarely fires)."""
        return (self.indices >= 0).sum(dim=1)


def top_activations(
    activations: Activations,
    *,
    k: int = 16,
    positive_only: bool = True,
    device: torch.device | str | None = None,
) -> TopActivations:
    """The ``k`` highest-activating images of every neuron.

    Args:
        activations: ``(n_images, n_neurons)`` dense or torch sparse activations,
            :class:`TopKCodes`, or an iterable of such batches in image order.
        k: images per neuron (16 in the paper's user study and uniqueness analysis).
        positive_only: only images where the neuron is > 0 are candidates, so a neuron that
            fires on fewer than ``k`` images is padded rather than filled with arbitrary
            non-firing images (the paper's "activating images"). Pass ``False`` to rank every
            image, e.g. for raw model neurons that are mostly negative; this needs dense
            input, since the implicit zeros of sparse codes would all tie.
        device: where to compute (default: where each batch lies). Results are on the CPU.

    Raises:
        ValueError: ``k < 1``, NaN/inf activations, batches of different widths, an empty
            stream, or ``positive_only=False`` with sparse input.
        TypeError: an unsupported input type.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    best_values: Tensor | None = None
    best_indices = torch.empty(0, dtype=torch.long)
    offset = 0
    for index, raw in enumerate(iter_batches(activations)):
        where = "activations" if index == 0 else f"activations batch {index}"
        target = torch.device(device) if device is not None else _device_of(raw)
        batch = to_dense_or_entries(raw, target, where=where)
        if isinstance(batch, Tensor):
            n_batch, n_neurons = (int(s) for s in batch.shape)
            values, indices = _dense_top(batch, k, positive_only, offset, where)
        else:
            if not positive_only:
                raise ValueError(
                    f"{where}: positive_only=False needs dense activations; the implicit zeros "
                    "of sparse codes would all tie for the remaining places"
                )
            n_batch, n_neurons = batch.n_images, batch.n_neurons
            values, indices = _sparse_top(batch, k, offset)
        if best_values is None:
            best_values, best_indices = values, indices
        elif n_neurons != int(best_values.shape[0]):
            raise ValueError(
                f"{where} has {n_neurons} neurons but earlier batches had "
                f"{int(best_values.shape[0])}"
            )
        else:
            best_values, best_indices = _merge(best_values, best_indices, values, indices, k)
        offset += n_batch
    if best_values is None:
        raise ValueError("activations: the stream yielded no batches")
    if offset == 0 or best_values.shape[0] == 0:
        raise ValueError(f"activations are empty: {offset} images, {best_values.shape[0]} neurons")
    padded = best_indices < 0
    return TopActivations(
        values=best_values.masked_fill(padded, torch.nan).cpu(),
        indices=best_indices.cpu(),
        n_images=offset,
    )


def _device_of(batch: object) -> torch.device:
    if isinstance(batch, Tensor):
        return batch.device
    indices = getattr(batch, "indices", None)
    return indices.device if isinstance(indices, Tensor) else torch.device("cpu")


def _dense_top(
    batch: Tensor, k: int, positive_only: bool, offset: int, where: str
) -> tuple[Tensor, Tensor]:
    """Per-neuron top-k of a dense batch, image-row block by block; padding is -inf / -1."""
    n_batch, n_neurons = (int(s) for s in batch.shape)
    rows_per_block = max(1, _BLOCK_ELEMENTS // max(1, n_neurons))
    values = torch.full((n_neurons, k), -torch.inf, dtype=torch.float64, device=batch.device)
    indices = torch.full((n_neurons, k), -1, dtype=torch.long, device=batch.device)
    for start in range(0, n_batch, rows_per_block):
        block = batch[start : start + rows_per_block].to(torch.float64)
        bad = ~torch.isfinite(block)
        if bool(bad.any()):
            row, col = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"{where}: activation of image {offset + start + row}, neuron {col} is "
                f"{float(block[row, col])}; activations must be finite"
            )
        if positive_only:
            block = block.masked_fill(block <= 0, -torch.inf)
        # A stable descending sort keeps equal activations in image order.
        block_values, order = torch.sort(block, dim=0, descending=True, stable=True)
        block_values = block_values[:k].T
        block_indices = (order[:k].T + offset + start).masked_fill(block_values == -torch.inf, -1)
        values, indices = _merge(values, indices, block_values, block_indices, k)
    return values, indices


def _sparse_top(entries: SparseEntries, k: int, offset: int) -> tuple[Tensor, Tensor]:
    """Per-neuron top-k over the stored positive entries, by two stable sorts of the entries
    (which are in image order): value descending, then neuron; then each entry's rank within
    its neuron."""
    keep = entries.values > 0
    rows, cols, vals = entries.rows[keep], entries.cols[keep], entries.values[keep]
    order = torch.argsort(vals, descending=True, stable=True)
    order = order[torch.argsort(cols[order], stable=True)]
    rows, cols, vals = rows[order], cols[order], vals[order]
    counts = torch.bincount(cols, minlength=entries.n_neurons)
    starts = torch.cumsum(counts, dim=0) - counts
    rank = torch.arange(cols.numel(), device=cols.device) - starts[cols]
    top = rank < k
    device = entries.values.device
    values = torch.full((entries.n_neurons, k), -torch.inf, dtype=torch.float64, device=device)
    indices = torch.full((entries.n_neurons, k), -1, dtype=torch.long, device=device)
    values[cols[top], rank[top]] = vals[top]
    indices[cols[top], rank[top]] = rows[top] + offset
    return values, indices


def _merge(
    values: Tensor, indices: Tensor, new_values: Tensor, new_indices: Tensor, k: int
) -> tuple[Tensor, Tensor]:
    """Top-k of two per-neuron candidate lists; ``values``' images all precede ``new_values``',
    so the stable sort keeps ties in image order."""
    both_values = torch.cat([values, new_values], dim=1)
    both_indices = torch.cat([indices, new_indices], dim=1)
    merged, order = torch.sort(both_values, dim=1, descending=True, stable=True)
    return merged[:, :k], torch.gather(both_indices, 1, order[:, :k])
