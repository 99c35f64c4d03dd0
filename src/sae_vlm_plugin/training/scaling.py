"""The paper's input scaling: activations divided by ``sqrt(mean ||x||^2)`` during training."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch


@torch.no_grad()
def estimate_paper_scaling_factor(batches: Iterator[torch.Tensor], n_batches: int = 100) -> float:
    """``1 / sqrt(mean_batches mean_b ||x_b||^2)`` over the next ``n_batches`` batches: multiply
    activations by it and their mean squared norm becomes 1 (dictionary_learning's
    ``get_norm_factor``, returned as the reciprocal so that it plugs into SAELens'
    ``ActivationScaler(scaling_factor=...)``, which multiplies).

    SAELens' own ``expected_average_only_in`` estimate is different: ``sqrt(d_in) / mean ||x||``
    (norms of about ``sqrt(d_in)`` instead of 1)."""
    return paper_scaling_factor(mean_squared_norm(batches, n_batches))


@torch.no_grad()
def mean_squared_norm(batches: Iterator[torch.Tensor], n_batches: int) -> float:
    """``mean_batches mean_b ||x_b||^2`` over the next ``n_batches`` batches, in float64. Over
    data-parallel ranks holding equal shares of each batch, the mean of the ranks' values is
    the value of the whole batches."""
    if n_batches < 1:
        raise ValueError(f"n_batches must be >= 1, got {n_batches}")
    total = 0.0
    for index in range(n_batches):
        batch = next(batches)
        squared_norms = batch.double().pow(2).sum(dim=-1)
        if not torch.isfinite(squared_norms).all():
            raise ValueError(f"batch {index} of the scaling estimate holds NaN/inf activations")
        total += squared_norms.mean().item()
    return total / n_batches


def paper_scaling_factor(mean_squared_norm: float) -> float:
    """``1 / sqrt(mean_squared_norm)``, refusing all-zero activations."""
    if mean_squared_norm <= 0:
        raise ValueError("the activations are all zero; they cannot be scaled to unit norm")
    return 1.0 / math.sqrt(mean_squared_norm)
