"""Uniqueness of concepts (paper appendix G): Jaccard index of the top-k image sets of every
pair of neurons.

For neurons ``i != j`` with top image sets ``T_i``, ``T_j``::

    J(i, j) = |T_i ∩ T_j| / |T_i ∪ T_j| = |T_i ∩ T_j| / (|T_i| + |T_j| - |T_i ∩ T_j|)

Only pairs that share an image have ``J > 0``, and those are found through the images: every
image lists the neurons whose top set holds it, and each pair of such neurons gets one shared
image. This is the sparse product ``B B^T`` of the neuron x image incidence matrix ``B``,
computed block by block over neurons, never a loop over all ``n_neurons^2 / 2`` pairs.
"""

# jaxtyping shape strings such as "n_images k" are not forward references.

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sae_vlm_plugin.metrics.top_activations import TopActivations

if TYPE_CHECKING:
    from jaxtyping import Float, Int

__all__ = ["UniquenessResult", "jaccard_uniqueness"]


@dataclass(frozen=True)
class UniquenessResult:
    """Pairwise Jaccard statistics over the neurons considered."""

    n_neurons: int
    """Neurons considered (those with a complete top set, unless ``require_full=False``)."""
    n_excluded: int
    """Neurons left out for having fewer than ``k`` top images (the paper drops 10 of 12288)."""
    n_pairs: int
    """Unordered pairs of neurons considered, ``n_neurons * (n_neurons - 1) / 2``."""
    n_overlapping: int
    """Pairs with ``J > 0`` (sharing at least one image)."""
    n_above_threshold: int
    """Pairs with ``J > threshold``."""
    threshold: float
    mean_jaccard: float
    """Mean of ``J`` over all pairs (non-overlapping pairs count as 0)."""
    max_jaccard: float
    fraction_unique: float
    """Fraction of considered neurons whose top set equals no other neuron's (``J < 1`` with
    every other neuron)."""
    max_jaccard_per_neuron: Float[Tensor, " n_neurons_total"]
    """Per neuron (all neurons, in input order): largest ``J`` with any other considered
    neuron; 0 if it overlaps none, NaN if excluded."""


def jaccard_uniqueness(
    top: TopActivations | Int[Tensor, "n_neurons k"],
    *,
    threshold: float = 0.5,
    require_full: bool = True,
    neuron_chunk_size: int = 4096,
    max_block_pairs: int = 1 << 23,
) -> UniquenessResult:
    """Jaccard index between the top-k image sets of all pairs of neurons.

    Args:
        top: :class:`TopActivations`, or a ``(n_neurons, k)`` tensor of image indices with
            -1 marking padding.
        threshold: also count the pairs with ``J > threshold`` (0.5 in the paper).
        require_full: leave out neurons with fewer than ``k`` top images, as the paper does.
            Otherwise sets of any non-zero size take part.
        neuron_chunk_size: at most this many neurons have their pairs expanded at once.
        max_block_pairs: and at most this many (neuron, neighbour) incidences (about 64 bytes
            each: the default bounds a block to ~0.5 GB), however many neurons share an image:
            a dense SAE of 65,536 latents on 300 images has ~3,500 per image, and 4,096 such
            neurons would expand to 229 million incidences (~15 GB).

    Raises:
        ValueError: a malformed index tensor or a non-positive ``neuron_chunk_size``.
    """
    indices = top.indices if isinstance(top, TopActivations) else top
    if not isinstance(indices, Tensor) or indices.ndim != 2 or indices.dtype.is_floating_point:
        raise ValueError(
            "top must be TopActivations or a 2-D integer (n_neurons, k) tensor of image "
            f"indices, got {type(indices).__name__} of shape {tuple(getattr(indices, 'shape', ()))}"
        )
    if isinstance(neuron_chunk_size, bool) or neuron_chunk_size < 1:
        raise ValueError(f"neuron_chunk_size must be a positive int, got {neuron_chunk_size!r}")
    if isinstance(max_block_pairs, bool) or max_block_pairs < 1:
        raise ValueError(f"max_block_pairs must be a positive int, got {max_block_pairs!r}")
    indices = indices.to(device="cpu", dtype=torch.long)
    n_total, k = (int(s) for s in indices.shape)
    sizes = (indices >= 0).sum(dim=1)
    _check_sets(indices)
    considered = sizes == k if require_full else sizes > 0
    members = considered.nonzero().squeeze(1)
    n = int(members.numel())

    # Incidences (neuron position p in `members`, image), grouped by image.
    images = indices[members].reshape(-1)
    valid = images >= 0
    position = torch.arange(n).repeat_interleave(k)[valid]
    images = images[valid]
    by_image = torch.argsort(images, stable=True)
    image_sorted, position_sorted = images[by_image], position[by_image]
    unique_images, per_image = torch.unique_consecutive(image_sorted, return_counts=True)
    image_start = torch.cumsum(per_image, dim=0) - per_image
    group_of = torch.repeat_interleave(torch.arange(unique_images.numel()), per_image)
    # For each incidence (sorted by image): where its image's group starts and its size.
    start_of, size_of = image_start[group_of], per_image[group_of]

    set_size = sizes[members].to(torch.float64)
    best = torch.zeros(n, dtype=torch.float64)
    n_overlapping = n_above = 0
    jaccard_sum = 0.0
    jaccard_max = 0.0
    # Incidences are processed in blocks of consecutive neuron positions; each incidence of
    # neuron p pairs with the other neurons q > p that hold the same image.
    expansion = torch.zeros(n, dtype=torch.long).index_add_(0, position_sorted, size_of)
    ends = _block_ends(expansion, neuron_chunk_size, max_block_pairs)
    for lo, hi in itertools.pairwise([0, *ends]):
        mine = ((position_sorted >= lo) & (position_sorted < hi)).nonzero().squeeze(1)
        if mine.numel() == 0:
            continue
        repeats = size_of[mine]
        source = mine.repeat_interleave(repeats)
        offsets = torch.arange(int(repeats.sum())) - torch.repeat_interleave(
            torch.cumsum(repeats, 0) - repeats, repeats
        )
        partner = position_sorted[start_of[source] + offsets]
        owner = position_sorted[source]
        keep = partner > owner
        owner, partner = owner[keep], partner[keep]
        keys, shared = torch.unique(owner * n + partner, return_counts=True)
        p, q = keys // n, keys % n
        jaccard = shared / (set_size[p] + set_size[q] - shared)
        n_overlapping += int(jaccard.numel())
        n_above += int((jaccard > threshold).sum())
        jaccard_sum += float(jaccard.sum())
        if jaccard.numel():
            jaccard_max = max(jaccard_max, float(jaccard.max()))
            best.scatter_reduce_(0, p, jaccard, "amax")
            best.scatter_reduce_(0, q, jaccard, "amax")
    n_pairs = n * (n - 1) // 2
    per_neuron = torch.full((n_total,), torch.nan, dtype=torch.float64)
    per_neuron[members] = best
    return UniquenessResult(
        n_neurons=n,
        n_excluded=n_total - n,
        n_pairs=n_pairs,
        n_overlapping=n_overlapping,
        n_above_threshold=n_above,
        threshold=float(threshold),
        mean_jaccard=jaccard_sum / n_pairs if n_pairs else float("nan"),
        max_jaccard=jaccard_max if n_pairs else float("nan"),
        fraction_unique=float((best < 1).sum()) / n if n else float("nan"),
        max_jaccard_per_neuron=per_neuron,
    )


def _block_ends(expansion: Tensor, max_neurons: int, max_pairs: int) -> list[int]:
    """Ends of consecutive blocks of neuron positions, each of at most ``max_neurons`` neurons
    whose ``expansion`` (incidences each expands to) sums to at most ``max_pairs`` - or of one
    neuron, when that neuron alone expands to more."""
    total = expansion.cumsum(0)
    ends: list[int] = []
    lo, n = 0, int(expansion.numel())
    while lo < n:
        before = int(total[lo - 1]) if lo else 0
        fits = int(torch.searchsorted(total, before + max_pairs, right=True))
        lo = min(max(fits, lo + 1), lo + max_neurons, n)
        ends.append(lo)
    return ends


def _check_sets(indices: Tensor) -> None:
    """Each row: distinct image indices >= 0, then only -1 padding."""
    if indices.numel() == 0:
        return
    if int(indices.min()) < -1:
        raise ValueError("top image indices must be >= 0, with -1 only as padding")
    ordered = indices.sort(dim=1).values
    repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    if bool(repeated.any()):
        row = int(repeated.any(dim=1).nonzero()[0, 0])
        raise ValueError(f"neuron {row} lists an image twice in its top set: {indices[row]}")
