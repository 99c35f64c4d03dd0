"""Sparse autograd kernels of a BatchTopK training step.

After the encoder matmul a step only touches the ``n`` active entries (``k * B`` BatchTopK
entries plus the auxiliary ones) of the ``(B, d_sae)`` code. Autograd functions carry
the gradient through them without any dense ``d_sae``-wide backward pass; every product below
is a sparse-dense product costing ``n * d_in`` multiply-adds (torch CSR kernels: MKL on CPU,
cuSPARSE on CUDA):

- ``active_values``: the active values ``v_e = ReLU(pre)[r_e, j_e]`` (all positive) of the
  dense pre-activations ``pre = (x - b_dec) @ W_enc + b_enc``, computed beforehand without
  autograd. With ``g_e = dL/dv_e * 1[v_e > 0]`` and ``S`` the sparse ``(B, d_sae)`` matrix of
  the ``g_e``: ``dW_enc = (x - b_dec)^T S``, ``db_enc = 1^T S``, ``db_dec = -W_enc db_enc``
  (the input activations are data and get no gradient).
- ``decode_active``: segment ``s`` of the output is ``sum_{e in s} v_e W_dec[j_e]`` for each
  row (a Matryoshka group's contribution to the reconstruction, or the auxiliary
  reconstruction). With ``G_s`` the upstream gradient of segment s:
  ``dv_e = G_s[r_e] . W_dec[j_e]`` (a sampled matmul) and ``dW_dec[j] = sum_e v_e G_s[r_e]``.
- ``level_errors``: the Matryoshka prefix errors and their weighted MSE, with a hand-written
  backward (a few passes over ``(G, B, d_in)`` instead of autograd's cumulative-sum chain).
- ``tangent_to_unit_rows``: the identity on ``W_dec`` whose backward removes from each row's
  gradient its component along the row: ``g_j - (g_j . u_j) u_j``, ``u_j = W_j / (||W_j|| + 1e-6)``
  (dictionary_learning's ``remove_gradient_parallel_to_decoder_directions``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd.function import once_differentiable


@dataclass(frozen=True)
class ActivePattern:
    """Where the active entries of one step sit, in the layouts the sparse kernels need.

    Entries are numbered in *entry order*: the BatchTopK entries in row-major order, then the
    auxiliary entries. Entry e sits at input row ``r_e`` and latent ``j_e`` and belongs to
    decoder segment ``s_e`` (its Matryoshka group, or the auxiliary segment after the groups);
    ``stacked_e = s_e * n_rows + r_e`` is its row in the ``(n_segments * n_rows, d_sae)`` matrix
    whose product with ``W_dec`` gives every segment's reconstruction at once. No latent has
    entries in two segments (groups are disjoint and auxiliary latents are dead, i.e. absent
    from the BatchTopK entries), so ordering by (latent, stacked row) also orders by (latent, row).
    """

    n_rows: int
    """B, the inputs in the batch."""
    d_sae: int
    """Latents."""
    n_segments: int
    """Decoder output segments: the Matryoshka groups, plus the auxiliary one if requested."""
    latent: torch.Tensor
    """``(n,)`` the latent ``j_e`` of each entry, entry order."""
    by_row_order: torch.Tensor
    """``(n,)`` the entry at each slot of the CSR matrix ordered by (stacked row, latent)."""
    by_row_crow: torch.Tensor
    """``(n_segments * n_rows + 1,)`` its row pointers."""
    by_row_latent: torch.Tensor
    """``(n,)`` its column (latent) indices."""
    by_latent_order: torch.Tensor
    """``(n,)`` the entry at each slot of the CSR matrix ordered by (latent, stacked row)."""
    by_latent_crow: torch.Tensor
    """``(d_sae + 1,)`` its row pointers."""
    by_latent_stacked_row: torch.Tensor
    """``(n,)`` its column indices in the stacked ``n_segments * n_rows`` space."""
    by_latent_row: torch.Tensor
    """``(n,)`` the same columns as plain input rows (``stacked mod n_rows``)."""

    @classmethod
    def build(
        cls,
        topk_flat_index: torch.Tensor,
        aux_rows: torch.Tensor,
        aux_latents: torch.Tensor,
        level_widths: list[int],
        n_rows: int,
        d_sae: int,
        aux_segment: bool,
    ) -> ActivePattern:
        """Index the BatchTopK entries (ascending flat indices) and the auxiliary entries;
        ``level_widths`` are the cumulative Matryoshka widths (``[d_sae]`` for plain BatchTopK).
        With ``aux_segment`` the output gets an auxiliary segment, even if it has no entries."""
        device = topk_flat_index.device
        n_groups = len(level_widths)
        topk_rows = topk_flat_index // d_sae
        topk_latents = topk_flat_index % d_sae
        boundaries = torch.tensor(level_widths[:-1], dtype=torch.long, device=device)
        segments = torch.bucketize(topk_latents, boundaries, right=True)
        rows = torch.cat([topk_rows, aux_rows])
        latents = torch.cat([topk_latents, aux_latents])
        segments = torch.cat([segments, torch.full_like(aux_rows, n_groups)])
        n_segments = n_groups + int(aux_segment)
        n_stacked = n_segments * n_rows
        stacked = segments * n_rows + rows

        by_row_order = torch.argsort(stacked * d_sae + latents)
        by_latent_order = torch.argsort(latents * n_stacked + stacked)
        by_latent_stacked_row = stacked[by_latent_order]
        return cls(
            n_rows=n_rows,
            d_sae=d_sae,
            n_segments=n_segments,
            latent=latents,
            by_row_order=by_row_order,
            by_row_crow=_row_pointers(stacked, n_stacked),
            by_row_latent=latents[by_row_order],
            by_latent_order=by_latent_order,
            by_latent_crow=_row_pointers(latents, d_sae),
            by_latent_stacked_row=by_latent_stacked_row,
            by_latent_row=by_latent_stacked_row % n_rows,
        )

    def by_row(self, entry_values: torch.Tensor) -> torch.Tensor:
        """``(n_segments * n_rows, d_sae)`` CSR matrix holding ``entry_values`` (entry order)."""
        return _csr(
            self.by_row_crow,
            self.by_row_latent,
            entry_values[self.by_row_order],
            (self.n_segments * self.n_rows, self.d_sae),
        )

    def by_latent(self, entry_values: torch.Tensor) -> torch.Tensor:
        """Its transpose, ``(d_sae, n_segments * n_rows)``."""
        return _csr(
            self.by_latent_crow,
            self.by_latent_stacked_row,
            entry_values[self.by_latent_order],
            (self.d_sae, self.n_segments * self.n_rows),
        )

    def by_latent_unstacked(self, entry_values: torch.Tensor) -> torch.Tensor:
        """``S^T``: the ``(d_sae, n_rows)`` CSR matrix of ``entry_values`` by (latent, row)."""
        return _csr(
            self.by_latent_crow,
            self.by_latent_row,
            entry_values[self.by_latent_order],
            (self.d_sae, self.n_rows),
        )


class _ActiveValues(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        b_dec: torch.Tensor,
        W_enc: torch.Tensor,
        b_enc: torch.Tensor,
        values: torch.Tensor,
        x_centered: torch.Tensor,
        pattern: ActivePattern,
    ) -> torch.Tensor:
        ctx.save_for_backward(x_centered, W_enc, values)
        ctx.pattern = pattern
        return values.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_values: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x_centered, W_enc, values = ctx.saved_tensors
        pattern: ActivePattern = ctx.pattern
        grad_pre = grad_values * (values > 0)
        need_b_dec, need_W_enc, need_b_enc = ctx.needs_input_grad[:3]
        grad_b_dec = grad_W_enc = grad_b_enc = None
        if need_W_enc:
            # dW_enc^T = S^T (x - b_dec), written straight into the (d_in, d_sae) layout
            grad_W_enc = x_centered.new_empty(W_enc.shape)
            _sparse_mm_into(grad_W_enc.T, pattern.by_latent_unstacked(grad_pre), x_centered)
        if need_b_enc or need_b_dec:
            grad_b_enc = torch.zeros(pattern.d_sae, dtype=grad_pre.dtype, device=grad_pre.device)
            grad_b_enc.index_add_(0, pattern.latent, grad_pre)
            if need_b_dec:
                grad_b_dec = -(W_enc @ grad_b_enc)
        return grad_b_dec, grad_W_enc, grad_b_enc, None, None, None


class _DecodeActive(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, values: torch.Tensor, W_dec: torch.Tensor, pattern: ActivePattern, n_levels: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(values, W_dec)
        ctx.pattern = pattern
        segments = W_dec.new_empty(pattern.n_segments, pattern.n_rows, W_dec.shape[1])
        _sparse_mm_into(segments.view(-1, W_dec.shape[1]), pattern.by_row(values), W_dec)
        return segments[:n_levels], segments[n_levels:]

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_levels: torch.Tensor, grad_aux: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        values, W_dec = ctx.saved_tensors
        pattern: ActivePattern = ctx.pattern
        d_in = W_dec.shape[1]
        grad_stacked = grad_levels.reshape(-1, d_in)
        if grad_aux.numel():
            grad_stacked = torch.cat([grad_stacked, grad_aux.reshape(-1, d_in)])
        grad_values = grad_W_dec = None
        if ctx.needs_input_grad[0]:
            sampled = torch.sparse.sampled_addmm(
                pattern.by_row(values), grad_stacked, W_dec.T, beta=0.0
            ).values()
            grad_values = torch.empty_like(values)
            grad_values[pattern.by_row_order] = sampled
        if ctx.needs_input_grad[1]:
            grad_W_dec = torch.empty_like(W_dec)
            _sparse_mm_into(grad_W_dec, pattern.by_latent(values), grad_stacked)
        return grad_values, grad_W_dec, None, None


class _LevelErrors(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        b_dec: torch.Tensor,
        contributions: torch.Tensor,
        x: torch.Tensor,
        weights: list[float],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n_levels, n_rows = contributions.shape[:2]
        errors = torch.empty_like(contributions)
        previous = x - b_dec
        for level in range(n_levels):
            previous = torch.sub(previous, contributions[level], out=errors[level])
        flat = errors.view(n_levels, -1)
        level_mse = torch.stack([torch.dot(e, e) for e in flat]) / n_rows
        loss = (
            level_mse * torch.tensor(weights, dtype=level_mse.dtype, device=level_mse.device)
        ).mean()
        ctx.save_for_backward(errors)
        ctx.weights = weights
        residual = errors[-1]
        ctx.mark_non_differentiable(level_mse, residual)
        return loss, level_mse, residual

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any,
        grad_loss: torch.Tensor,
        _grad_level_mse: torch.Tensor,
        _grad_residual: torch.Tensor,
    ) -> tuple[torch.Tensor | None, ...]:
        (errors,) = ctx.saved_tensors
        weights: list[float] = ctx.weights
        n_levels, n_rows = errors.shape[:2]
        scale = 2.0 * float(grad_loss) / (n_levels * n_rows)
        grad_contributions = torch.empty_like(errors)
        torch.mul(errors[-1], -scale * weights[-1], out=grad_contributions[-1])
        for level in range(n_levels - 2, -1, -1):
            torch.add(
                grad_contributions[level + 1],
                errors[level],
                alpha=-scale * weights[level],
                out=grad_contributions[level],
            )
        grad_b_dec = grad_contributions[0].sum(dim=0) if ctx.needs_input_grad[0] else None
        return grad_b_dec, grad_contributions, None, None


class _TangentToUnitRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, W_dec: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(W_dec)
        return W_dec.view_as(W_dec)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (W_dec,) = ctx.saved_tensors
        # g - (g . u) u with u = W / (||W|| + 1e-6), i.e. g - ((g . W) / (||W|| + 1e-6)^2) W
        norms = torch.linalg.vector_norm(W_dec, dim=1) + 1e-6
        along = torch.einsum("jd,jd->j", grad, W_dec) / norms.square()
        return torch.addcmul(grad, along.unsqueeze(1), W_dec, value=-1)


def active_values(
    b_dec: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    values: torch.Tensor,
    x_centered: torch.Tensor,
    pattern: ActivePattern,
) -> torch.Tensor:
    """The ``(n,)`` active values ``v_e = ReLU(pre)[r_e, j_e]``, computed without autograd, as a
    function of ``b_dec, W_enc, b_enc`` (sparse backward, see the module docstring).

    ``x_centered = x - b_dec`` is the no-grad tensor they were computed from; the input
    activations are data, so no gradient flows to them."""
    out: torch.Tensor = _ActiveValues.apply(b_dec, W_enc, b_enc, values, x_centered, pattern)
    return out


def decode_active(
    values: torch.Tensor, W_dec: torch.Tensor, pattern: ActivePattern, n_levels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each segment's ``sum_e v_e W_dec[j_e]`` per input row (no bias), split into the
    ``(n_levels, B, d_in)`` Matryoshka group contributions and the ``(0 or 1, B, d_in)``
    auxiliary reconstruction."""
    levels, aux = _DecodeActive.apply(values, W_dec, pattern, n_levels)
    return levels, aux


def level_errors(
    b_dec: torch.Tensor, contributions: torch.Tensor, x: torch.Tensor, weights: list[float]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Matryoshka reconstruction loss, fused.

    With ``E_g = x - b_dec - sum_{h <= g} C_h`` (``C`` = ``contributions``, G levels, B rows):
    returns ``loss = mean_g w_g ||E_g||^2 / B`` (differentiable in ``b_dec`` and ``C``:
    ``dL/dC_h = -(2 / (G B)) sum_{g >= h} w_g E_g``, ``dL/db_dec = sum_b dL/dC_0``), the
    per-level ``||E_g||^2 / B`` and the full residual ``E_G`` (both without gradient)."""
    loss, level_mse, residual = _LevelErrors.apply(b_dec, contributions, x, weights)
    return loss, level_mse, residual


def tangent_to_unit_rows(W_dec: torch.Tensor) -> torch.Tensor:
    """``W_dec`` itself, whose gradient loses each row's component along that row."""
    out: torch.Tensor = _TangentToUnitRows.apply(W_dec)
    return out


def _sparse_mm_into(out: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor) -> None:
    """``out = sparse @ dense``, written in place. ``beta=0`` makes ``addmm`` ignore ``out``'s
    contents (documented), so ``out`` may come from ``torch.empty``; ``sparse @ dense`` would
    zero-fill a temporary and copy it, which costs more than the product itself."""
    torch.addmm(out, sparse, dense, beta=0.0, out=out)


def _row_pointers(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    crow = torch.zeros(n_rows + 1, dtype=torch.long, device=rows.device)
    torch.cumsum(torch.bincount(rows, minlength=n_rows), dim=0, out=crow[1:])
    return crow


def _csr(
    crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)
