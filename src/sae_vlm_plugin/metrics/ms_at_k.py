"""MS@k: ViSAEBench's monosemanticity score, beside the exact MS so that the numbers compare.

ViSAEBench (M5) scores latent ``j`` on its top-``k`` images only (k = 16): with
``w_a = (x_aj - min_n x_nj) / (max_n x_nj - min_n x_nj)`` (min and max over all images) and
unit embeddings ``e_a`` of the top images ``a = 1..k``,

    MS@k_j = sum_{a<b} w_a w_b cos(e_a, e_b) / sum_{a<b} w_a w_b
           = (||sum_a w_a e_a||^2 - sum_a w_a^2) / ((sum_a w_a)^2 - sum_a w_a^2),

for every latent that fires (``max_n x_nj > 0``) and has a positive denominator; its summary is
the mean over those. The exact MS (``monosemanticity_score``) is the same sum over all pairs of
images; MS@k leaves out every pair outside the top k, so it reads higher for a latent whose top
images agree and whose tail does not. ViSAEBench max-pools patch codes per image and subsamples
1000 latents when more fire; pass codes pooled the same way to compare.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from sae_vlm_plugin.metrics.codes import SparseEntries, neuron_block


@dataclass(frozen=True)
class MSAtK:
    """MS@k of every latent (NaN: dead, or a zero denominator) and their mean."""

    scores: Float[Tensor, " n_latents"]
    k: int

    @property
    def mean(self) -> float:
        scored = self.scores[~torch.isnan(self.scores)]
        return float(scored.mean()) if scored.numel() else float("nan")


def ms_at_k(
    codes: Float[Tensor, "n_images n_latents"],
    embeddings: Float[Tensor, "n_images d"],
    k: int = 16,
    chunk: int = 1024,
) -> MSAtK:
    """MS@k (module docstring) of each column of ``codes`` (dense, or sparse COO with
    non-negative values such as SAE codes), with ``embeddings`` one row per image; fp64,
    ``chunk`` latents at a time. Sparse codes are read per latent from their non-zero entries:
    the images a latent does not fire on have weight 0 (its minimum is 0 unless it fires on
    every image), so they add nothing to either sum."""
    n_images, n_latents = (int(s) for s in codes.shape)
    if len(embeddings) != n_images:
        raise ValueError(f"{len(embeddings)} embeddings for codes of {n_images} images")
    if k < 2:
        raise ValueError(f"k={k}: MS@k needs at least 2 images per latent")
    unit = torch.nn.functional.normalize(embeddings.double(), dim=1)
    if codes.is_sparse:
        return MSAtK(_sparse_scores(codes.coalesce(), unit, k, chunk), k)
    scores = torch.full((n_latents,), float("nan"), dtype=torch.float64)
    for start in range(0, n_latents, chunk):
        block = codes[:, start : start + chunk].double()
        low, high = block.min(0).values, block.max(0).values
        top = block.topk(min(k, n_images), dim=0)
        weights = (top.values - low) / torch.where(high > low, high - low, 1.0)
        summed = torch.einsum("ij,ijd->jd", weights, unit[top.indices])
        scores[start : start + block.shape[1]] = _ratio(
            summed, weights.sum(0), weights.pow(2).sum(0), high
        )
    return MSAtK(scores, k)


def _sparse_scores(codes: Tensor, unit: Tensor, k: int, chunk: int) -> Tensor:
    """MS@k from the non-zero entries of coalesced sparse ``codes``: each latent's ``k``
    largest entries, found by one sort (by value, then stably by latent), weighted and summed
    over the unit embeddings as the exact MS does, one latent-major sparse-dense product
    (``neuron_block @ unit``, costing ``n_kept * d``) per ``chunk`` latents."""
    n_images, n_latents = (int(s) for s in codes.shape)
    image, latent = codes.indices()
    value = codes.values().double()
    if bool((value < 0).any()):
        raise ValueError("sparse codes must be non-negative (SAE codes); pass signed ones dense")
    order = torch.argsort(value, descending=True, stable=True)
    order = order[torch.argsort(latent[order], stable=True)]
    image, latent, value = image[order], latent[order], value[order]
    counts = torch.bincount(latent, minlength=n_latents)
    first = torch.cumsum(counts, 0) - counts
    empty = torch.zeros(n_latents, dtype=torch.float64)
    high = empty.scatter_reduce(0, latent, value, "amax", include_self=False)
    smallest = empty.scatter_reduce(0, latent, value, "amin", include_self=False)
    low = torch.where(counts == n_images, smallest, 0.0)
    keep = torch.arange(len(latent)) - first[latent] < k
    image, latent, value = image[keep], latent[keep], value[keep]
    span = torch.where(high > low, high - low, 1.0)
    weights = (value - low[latent]) / span[latent]
    kept = SparseEntries(image, latent, weights, n_images, n_latents)
    ptr = torch.zeros(n_latents + 1, dtype=torch.long)
    ptr[1:] = torch.cumsum(torch.bincount(latent, minlength=n_latents), 0)
    summed = torch.empty(n_latents, unit.shape[1], dtype=torch.float64)
    for start in range(0, n_latents, chunk):
        stop = min(start + chunk, n_latents)
        torch.mm(neuron_block(kept, ptr, start, stop), unit, out=summed[start:stop])
    sums = empty.index_add(0, latent, weights)
    squares = empty.index_add(0, latent, weights.pow(2))
    return _ratio(summed, sums, squares, high)


def _ratio(summed: Tensor, sums: Tensor, squares: Tensor, high: Tensor) -> Tensor:
    """``(||sum w e||^2 - sum w^2) / ((sum w)^2 - sum w^2)`` where the latent fires and the
    denominator is positive, NaN elsewhere."""
    numerator = summed.pow(2).sum(1) - squares
    denominator = sums.pow(2) - squares
    keep = (high > 0) & (denominator > 0)
    return torch.where(keep, numerator / torch.where(keep, denominator, 1.0), float("nan"))
