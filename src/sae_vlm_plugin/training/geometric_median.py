"""The geometric median that initialises ``b_dec`` (Weiszfeld's algorithm, as in
dictionary_learning)."""

from __future__ import annotations

import torch


@torch.no_grad()
def geometric_median(points: torch.Tensor, max_iter: int = 100, tol: float = 1e-5) -> torch.Tensor:
    """``argmin_m sum_n ||p_n - m||`` over the rows of ``points`` ``(n, d)``, by Weiszfeld's
    iteration: start at the mean, then ``m <- sum_n w_n p_n`` with ``w_n ∝ 1 / ||p_n - m||``,
    until ``||m_new - m|| < tol`` or ``max_iter`` iterations.

    This is dictionary_learning's ``geometric_median`` (same start, weights, stopping rule and
    defaults) except that distances below the dtype's machine epsilon are clamped to it: the
    reference divides by zero (and returns NaN) when the estimate lands on a data point, e.g.
    when the batch holds duplicate rows.
    """
    guess = points.mean(dim=0)
    eps = torch.finfo(points.dtype).eps
    for _ in range(max_iter):
        previous = guess
        weights = 1.0 / torch.linalg.vector_norm(points - guess, dim=1).clamp_min(eps)
        weights = weights / weights.sum()
        guess = (weights.unsqueeze(1) * points).sum(dim=0)
        if torch.linalg.vector_norm(guess - previous) < tol:
            break
    return guess
