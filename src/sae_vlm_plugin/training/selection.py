"""Which (input, latent) entries a BatchTopK training step keeps, found without sorting the batch.

A step keeps ``k * B`` entries out of ``B * d_sae``; ``torch.topk`` over the flattened batch
costs about as much as the encoder matmul on CPU. Here a strided sample of the batch gives a
cut-off that (almost always) leaves between ``k * B`` and a few times ``k * B`` candidates, and
``topk`` runs on those candidates only. The result is the exact top-k set whatever the sample
says: when the cut-off admits too few candidates the search falls back to all positive entries.
"""

from __future__ import annotations

import math

import torch

_SAMPLE_SIZE = 1 << 16
"""Number of entries in the strided sample that estimates the cut-off."""

_SAMPLE_MARGIN = 2.0
"""The cut-off aims at this many times the entries to keep (plus ``_SAMPLE_SLACK``)."""

_SAMPLE_SLACK = 64
"""Extra sample ranks below the cut-off, so that tiny expected counts still over-select."""


def batch_topk(
    pre_flat: torch.Tensor, n_keep: int, row_width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ascending flat indices, and values, of the ``n_keep`` largest *positive* entries of
    ``pre_flat`` (all positive entries when there are fewer).

    ``pre_flat`` is a flattened ``(B, row_width)`` batch of pre-activations; the result is the
    BatchTopK of ``ReLU(pre_flat)`` without the zeros that a plain ``topk`` would also return
    when fewer than ``n_keep`` entries are positive. Dropping them changes nothing downstream:
    they add nothing to any reconstruction, receive no gradient (ReLU's derivative is 0 there)
    and do not count as firing. Ties at the boundary are broken arbitrarily, as ``torch.topk``
    does.
    """
    n_total = pre_flat.numel()
    candidates: torch.Tensor | None = None
    if n_total > 4 * _SAMPLE_SIZE and 4 * n_keep < n_total:
        stride = _coprime_stride(n_total // _SAMPLE_SIZE, row_width)
        sample = pre_flat[::stride]
        rank = math.ceil(_SAMPLE_MARGIN * n_keep * sample.numel() / n_total) + _SAMPLE_SLACK
        if rank < sample.numel():
            cutoff = sample.topk(rank, sorted=False).values.min()
            if cutoff > 0:
                above = (pre_flat >= cutoff).nonzero().squeeze(1)
                if above.numel() >= n_keep:
                    candidates = above
    if candidates is None:
        candidates = (pre_flat > 0).nonzero().squeeze(1)
    values = pre_flat[candidates]
    if candidates.numel() > n_keep:
        keep = values.topk(n_keep, sorted=False).indices.sort().values
        candidates, values = candidates[keep], values[keep]
    return candidates, values


def auxiliary_entries(
    pre: torch.Tensor, dead: torch.Tensor, k_aux: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows, latents and values of each input's ``k_aux`` largest pre-activations among the dead
    latents, keeping only positive ones (the others are 0 after the ReLU: they contribute
    nothing and get no gradient).

    ``pre`` is ``(B, d_sae)``, ``dead`` a ``(d_sae,)`` mask with at least ``k_aux`` dead latents.
    This is dictionary_learning's ``where(dead, ReLU(pre), -inf).topk(k_aux, dim=-1)``.
    """
    dead_latents = dead.nonzero().squeeze(1)
    values, positions = pre.index_select(1, dead_latents).topk(k_aux, dim=1, sorted=False)
    positive = values > 0
    rows = torch.arange(pre.shape[0], device=pre.device).unsqueeze(1).expand_as(positions)
    return rows[positive], dead_latents[positions[positive]], values[positive]


def _coprime_stride(stride: int, row_width: int) -> int:
    """The smallest stride >= ``stride`` sharing no factor with ``row_width``, so that the
    strided sample visits every latent column rather than a few of them."""
    stride = max(stride, 1)
    while math.gcd(stride, row_width) != 1:
        stride += 1
    return stride
