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
    chunk: int = 256,
) -> MSAtK:
    """MS@k (module docstring) of each column of ``codes`` (dense or sparse COO), with
    ``embeddings`` one row per image; fp64, ``chunk`` latents at a time."""
    n_images, n_latents = (int(s) for s in codes.shape)
    if len(embeddings) != n_images:
        raise ValueError(f"{len(embeddings)} embeddings for codes of {n_images} images")
    if k < 2:
        raise ValueError(f"k={k}: MS@k needs at least 2 images per latent")
    unit = torch.nn.functional.normalize(embeddings.double(), dim=1)
    scores = torch.full((n_latents,), float("nan"), dtype=torch.float64)
    for start in range(0, n_latents, chunk):
        columns = torch.arange(start, min(start + chunk, n_latents))
        block = codes.index_select(1, columns)
        block = (block.to_dense() if block.is_sparse else block).double()
        low, high = block.min(0).values, block.max(0).values
        top = block.topk(min(k, n_images), dim=0)
        weights = (top.values - low) / torch.where(high > low, high - low, 1.0)
        summed = torch.einsum("ij,ijd->jd", weights, unit[top.indices])
        squares = weights.pow(2).sum(0)
        numerator = summed.pow(2).sum(1) - squares
        denominator = weights.sum(0).pow(2) - squares
        keep = (high > 0) & (denominator > 0)
        scores[columns[keep]] = numerator[keep] / denominator[keep]
    return MSAtK(scores, k)
