"""The activation inputs every metric accepts, and their one internal sparse form.

A metric reads activations of ``n_neurons`` neurons on ``n_images`` images in any of these forms:

- a dense ``(n_images, n_neurons)`` tensor or numpy array (raw model neurons, may be negative);
- a torch sparse tensor of that shape (COO, CSR or any layout ``to_sparse_coo`` accepts), e.g.
  SAE codes: entries that are not stored are activations of exactly 0;
- :class:`TopKCodes`: per image, the ``k`` neuron indices an SAE kept and their values;
- an iterable (a stream) of batches of any one of the above, in image order, covering the
  images once (so a generator reading a cache from disk works).

Sparse forms are never densified: they become :class:`SparseEntries`, the list of stored
``(image, neuron, value)`` triples.
"""

# jaxtyping shape strings such as "n_images k" are not forward references.

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from jaxtyping import Float, Int

__all__ = ["ActivationBatch", "Activations", "SparseEntries", "TopKCodes"]


@dataclass(frozen=True)
class TopKCodes:
    """Top-k SAE codes: image ``n`` activates neuron ``indices[n, s]`` with ``values[n, s]``.

    Every other neuron of image ``n`` is 0. A row may not name a neuron twice (the meaning of a
    repeated index is ambiguous, so it is refused). Stored values of 0 are allowed.
    """

    indices: Int[Tensor, "n_images k"]
    """Neuron index of each kept latent, integers in ``[0, n_neurons)``."""
    values: Float[Tensor, "n_images k"]
    """Activation value of each kept latent (finite real numbers)."""
    n_neurons: int
    """Width of the code (the SAE's ``d_sae``)."""

    def __post_init__(self) -> None:
        if not isinstance(self.indices, Tensor) or not isinstance(self.values, Tensor):
            raise TypeError(
                "TopKCodes needs torch tensors for indices and values, got "
                f"{type(self.indices).__name__} and {type(self.values).__name__}"
            )
        if isinstance(self.n_neurons, bool) or not isinstance(self.n_neurons, int):
            raise TypeError(f"TopKCodes.n_neurons must be an int, got {self.n_neurons!r}")
        if self.n_neurons < 1:
            raise ValueError(f"TopKCodes.n_neurons must be >= 1, got {self.n_neurons}")
        if self.indices.ndim != 2 or self.indices.shape != self.values.shape:
            raise ValueError(
                "TopKCodes needs indices and values of the same (n_images, k) shape, got "
                f"{tuple(self.indices.shape)} and {tuple(self.values.shape)}"
            )
        if self.indices.dtype.is_floating_point or self.indices.dtype in (torch.bool,):
            raise TypeError(f"TopKCodes.indices must be integers, got {self.indices.dtype}")
        if not self.values.dtype.is_floating_point:
            raise TypeError(f"TopKCodes.values must be floating point, got {self.values.dtype}")
        if self.indices.numel() == 0:
            return
        low, high = int(self.indices.min()), int(self.indices.max())
        if low < 0 or high >= self.n_neurons:
            raise ValueError(
                f"TopKCodes.indices must lie in [0, {self.n_neurons}), found {low}..{high}"
            )
        ordered = self.indices.sort(dim=1).values
        repeated = (ordered[:, 1:] == ordered[:, :-1]).any(dim=1)
        if bool(repeated.any()):
            row = int(repeated.nonzero()[0, 0])
            raise ValueError(
                f"TopKCodes row {row} names a neuron twice ({self.indices[row].tolist()}); "
                "each image must list distinct neurons"
            )

    @property
    def n_images(self) -> int:
        return int(self.indices.shape[0])


@dataclass(frozen=True)
class SparseEntries:
    """Stored activations as ``(image, neuron, value)`` triples; absent triples are 0.

    Entries are in image order (``rows`` non-decreasing), as every constructor here makes them:
    row-major top-k codes, coalesced COO, CSR and ``nonzero`` of a dense block all are.
    """

    rows: Int[Tensor, " nnz"]
    """Image index of each entry, within this batch."""
    cols: Int[Tensor, " nnz"]
    """Neuron index of each entry."""
    values: Float[Tensor, " nnz"]
    """Activation of each entry, float64."""
    n_images: int
    n_neurons: int

    def sorted_by_neuron(self) -> tuple[SparseEntries, Int[Tensor, " n_neurons_plus_1"]]:
        """The entries ordered by neuron (then image: a stable sort keeps the image order),
        with CSR row pointers over neurons: neuron ``j`` owns entries ``ptr[j]:ptr[j + 1]``."""
        order = _stable_argsort(self.cols, self.n_neurons)
        cols = self.cols[order]
        entries = SparseEntries(
            self.rows[order], cols, self.values[order], self.n_images, self.n_neurons
        )
        counts = torch.bincount(cols, minlength=self.n_neurons)
        ptr = torch.zeros(self.n_neurons + 1, dtype=torch.long, device=counts.device)
        ptr[1:] = torch.cumsum(counts, dim=0)
        return entries, ptr


def _stable_argsort(ids: Tensor, n_ids: int) -> Tensor:
    """Stable argsort of integers in ``[0, n_ids)``. On the CPU, ids that fit in 16 bits go to
    numpy, whose stable sort of 16-bit keys is a linear-time radix sort (about 10x faster than
    torch's comparison sort for SAE codes); otherwise torch's stable sort."""
    if ids.device.type == "cpu" and n_ids <= 2**16:
        return torch.from_numpy(np.argsort(ids.numpy().astype(np.uint16), kind="stable"))
    return torch.sort(ids, stable=True).indices


ActivationBatch: TypeAlias = Tensor | np.ndarray | TopKCodes
"""One batch of activations: dense array/tensor, torch sparse tensor, or :class:`TopKCodes`."""

Activations: TypeAlias = ActivationBatch | Iterable[ActivationBatch]
"""A whole activation matrix, or a stream of batches of it in image order."""


def is_single_batch(activations: object) -> bool:
    """Whether ``activations`` is one batch (as opposed to an iterable of batches)."""
    return isinstance(activations, (Tensor, np.ndarray, TopKCodes))


def iter_batches(activations: Activations) -> Iterator[ActivationBatch]:
    """The batches of ``activations``: itself if it is one batch, else its items."""
    if is_single_batch(activations):
        yield activations  # type: ignore[misc]
        return
    if isinstance(activations, (str, bytes, dict)) or not isinstance(activations, Iterable):
        raise TypeError(
            "activations must be a dense (n_images, n_neurons) tensor or array, a torch sparse "
            "tensor, TopKCodes, or an iterable of such batches; got "
            f"{type(activations).__name__}"
        )
    yield from activations


def to_dense_or_entries(
    batch: object, device: torch.device, *, where: str
) -> Tensor | SparseEntries:
    """A dense 2-D real tensor on ``device`` (dtype unchanged, not copied when possible) or the
    :class:`SparseEntries` of a sparse batch (float64, on ``device``). Stored values are checked
    to be finite here; dense values are checked by the caller chunk by chunk."""
    if isinstance(batch, TopKCodes):
        n_images, k = batch.indices.shape
        rows = torch.arange(n_images, device=device).repeat_interleave(k)
        entries = SparseEntries(
            rows,
            batch.indices.reshape(-1).to(device=device, dtype=torch.long),
            batch.values.reshape(-1).to(device=device, dtype=torch.float64),
            int(n_images),
            batch.n_neurons,
        )
        _check_entries_finite(entries, where)
        return entries
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(batch)
    if not isinstance(batch, Tensor):
        raise TypeError(
            f"{where}: expected a dense tensor/array, a torch sparse tensor or TopKCodes, "
            f"got {type(batch).__name__}"
        )
    if batch.ndim != 2:
        raise ValueError(
            f"{where}: expected a 2-D (n_images, n_neurons) matrix, got shape {tuple(batch.shape)}"
        )
    if batch.dtype == torch.bool or batch.dtype.is_complex:
        raise TypeError(f"{where}: expected real-valued activations, got dtype {batch.dtype}")
    if batch.layout == torch.strided:
        return batch.to(device)
    n_images, n_neurons = (int(s) for s in batch.shape)
    if batch.layout == torch.sparse_csr:
        crow = batch.crow_indices().to(device)
        rows = torch.repeat_interleave(torch.arange(n_images, device=device), crow[1:] - crow[:-1])
        cols, values = batch.col_indices().to(device), batch.values().to(device)
    else:
        coo = batch.to_sparse_coo().coalesce()
        rows, cols = coo.indices().to(device)
        values = coo.values().to(device)
    entries = SparseEntries(rows.long(), cols.long(), values.to(torch.float64), n_images, n_neurons)
    _check_entries_finite(entries, where)
    return entries


def _check_entries_finite(entries: SparseEntries, where: str) -> None:
    bad = ~torch.isfinite(entries.values)
    if bool(bad.any()):
        at = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{where}: activation of image {int(entries.rows[at])}, neuron "
            f"{int(entries.cols[at])} is {float(entries.values[at])}; activations must be finite"
        )


def neuron_block(entries: SparseEntries, ptr: Tensor, start: int, stop: int) -> Tensor:
    """Rows ``start:stop`` of the neuron-major sparse CSR matrix ``A[j, n]`` = activation of
    neuron ``j`` on image ``n``, from :meth:`SparseEntries.sorted_by_neuron`'s output (no copy
    of the entries). ``A_block @ dense`` is a sparse-dense product costing ``nnz * width``."""
    lo, hi = int(ptr[start]), int(ptr[stop])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            ptr[start : stop + 1] - lo,
            entries.rows[lo:hi],
            entries.values[lo:hi],
            size=(stop - start, entries.n_images),
            check_invariants=False,
        )
