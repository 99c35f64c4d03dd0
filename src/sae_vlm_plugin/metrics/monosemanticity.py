"""The MonoSemanticity score (MS) of every neuron (Pach et al. 2025, section 3.2, Eq. 5-9).

For neuron ``k`` over images ``n = 1..N`` with raw activations ``x_nk`` and embeddings ``e_n``
of a second image encoder (DINOv2 ViT-B in the paper)::

    a_nk = (x_nk - min_n x_nk) / (max_n x_nk - min_n x_nk)                       (Eq. 7)
    MS_k = sum_{n<m} a_nk a_mk cos(e_n, e_m) / sum_{n<m} a_nk a_mk                (Eq. 9)

The ``N x N`` similarity matrix is never built. With unit embeddings ``u_n = e_n / ||e_n||``
and the shifted activations ``y_n = x_nk - min_n x_nk``, the pair sums are
``2 sum_{n<m} y_n y_m u_n.u_m = ||sum_n y_n u_n||^2 - sum_n y_n^2`` and
``2 sum_{n<m} y_n y_m = (sum_n y_n)^2 - sum_n y_n^2``, so::

    MS_k = (||sum_n y_n u_n||^2 - sum_n y_n^2) / ((sum_n y_n)^2 - sum_n y_n^2)

The min-max scale ``max - min`` cancels; only the shift by the minimum matters. Everything is
accumulated in float64, neuron chunk by neuron chunk, so no temporary exceeds
``neuron_chunk_size`` rows.
"""

# jaxtyping shape strings such as "n_images k" are not forward references.

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from sae_vlm_plugin.metrics.codes import (
    Activations,
    SparseEntries,
    is_single_batch,
    iter_batches,
    neuron_block,
    to_dense_or_entries,
)
from sae_vlm_plugin.threads import ThreadGovernor

if TYPE_CHECKING:
    from jaxtyping import Float, Int

__all__ = ["MonosemanticityResult", "monosemanticity_score"]

_BLOCK_ELEMENTS = 2**23
"""float64 elements (64 MiB) per temporary block when ``neuron_chunk_size`` is not given."""

_PRODUCT_BLOCK_ELEMENTS = 2**18
"""float64 elements (2 MiB) per block of ``sum_n x_n u_n`` rows in the sparse paths: a block
that stays in cache while the product fills it is several times faster than a large one."""

_SPARSE_FRACTION = 1 / 32
"""Dense blocks with at most this fraction of non-zeros (after the shift) are multiplied as
sparse matrices; on CPU the sparse product wins below a few percent."""


@dataclass(frozen=True)
class MonosemanticityResult:
    """MS of every neuron, with the support each score rests on."""

    scores: Float[Tensor, " n_neurons"]
    """MS per neuron (float64, CPU). NaN where ``support < max(2, min_support)``: a dead or
    constant neuron (0/0), one that is above its minimum on a single image (0/0), or one masked
    by ``min_support``. A neuron above its minimum on exactly two images scores the cosine of
    that pair, which is why best scores of exactly 1.00 appear in the paper."""
    support: Int[Tensor, " n_neurons"]
    """Images with a non-zero normalised activation ``a_nk``, i.e. ``x_nk > min_n x_nk`` (for
    sparse SAE codes: the images the latent fires on, unless it fires on every image)."""
    n_images: int
    """Images the scores were computed over."""
    min_support: int
    """The ``min_support`` the scores were masked with."""

    @property
    def n_neurons(self) -> int:
        return int(self.scores.shape[0])

    @property
    def n_scored(self) -> int:
        """Neurons with a (non-NaN) score."""
        return int((~torch.isnan(self.scores)).sum())

    def summary(self) -> dict[str, float]:
        """Mean, Bessel-corrected std, min and max of the scored neurons (the statistics of the
        paper's Tables A2-A7), and how many neurons were scored, dead (support 0) or masked."""
        scored = self.scores[~torch.isnan(self.scores)]
        nan = float("nan")
        return {
            "mean": float(scored.mean()) if scored.numel() else nan,
            "std": float(scored.std()) if scored.numel() > 1 else nan,
            "min": float(scored.min()) if scored.numel() else nan,
            "max": float(scored.max()) if scored.numel() else nan,
            "n_scored": float(scored.numel()),
            "n_dead": float(int((self.support == 0).sum())),
            "n_masked": float(self.n_neurons - scored.numel()),
        }


_GOVERNOR = ThreadGovernor()
"""Thread count of successive CPU calls (``sae_vlm_plugin.threads``): a call on shared cores
makes the next ones run on fewer threads."""


def monosemanticity_score(
    activations: Activations,
    embeddings: Float[Tensor, "n_images d_embed"] | np.ndarray,
    *,
    min_support: int = 2,
    image_ids: Sequence[object] | Tensor | np.ndarray | None = None,
    embedding_ids: Sequence[object] | Tensor | np.ndarray | None = None,
    neuron_chunk_size: int | None = None,
    device: torch.device | str | None = None,
) -> MonosemanticityResult:
    """MS of every neuron: ``MS_k = (||sum_n y_n u_n||^2 - sum_n y_n^2) / ((sum_n y_n)^2 -
    sum_n y_n^2)`` with ``y_n = x_nk - min_n x_nk`` and unit embeddings ``u_n`` (see the module
    docstring for the derivation from Eq. 9 of the paper).

    Args:
        activations: ``(n_images, n_neurons)`` activations as a dense tensor/array, a torch
            sparse tensor (absent entries are 0), :class:`TopKCodes`, or an iterable of such
            batches in image order (all dense, or all sparse/top-k). Sparse input is never
            densified: its sums are sparse-dense products costing ``nnz * d_embed``.
        embeddings: ``(n_images, d_embed)`` embeddings of the same images, in the same order,
            from the image encoder that judges similarity. Rows are unit-normalised here.
        min_support: neurons with fewer than this many images above their minimum get NaN.
            A score needs at least 2 such images; raise it (e.g. to 16) to keep scores that
            rest on a handful of images out of a ranking.
        image_ids, embedding_ids: optional ids of the activation rows and of the embedding
            rows; when both are given they must be equal, in order.
        neuron_chunk_size: neurons per block; bounds the float64 temporaries to
            ``n_images x neuron_chunk_size`` (dense) or ``neuron_chunk_size x d_embed``
            (sparse). By default a dense block holds about 2**23 float64 values (64 MiB)
            and a sparse one 2**18 (2 MiB, small enough to stay in cache).
        device: where to compute (default: the embeddings' device). Results are on the CPU.

    How each input is summed (all in float64, exact up to rounding):

    - dense in memory: per neuron chunk, the minimum first, then the sums of ``y_n`` (two
      passes over the chunk, no algebraic shift). A chunk whose ``y`` is mostly zeros (SAE
      codes held in a dense matrix) is multiplied through its non-zeros only.
    - sparse / top-k in memory: raw sums of the stored entries ``x_n`` (absent entries are 0
      and add nothing), then the shift by the minimum ``m`` (0 unless the neuron is stored and
      non-zero on every image) applied algebraically with ``E = sum_n u_n`` over all images:
      ``sum y u = sum x u - m E``, ``sum y = sum x - N m``, ``sum y^2 = sum x^2 - 2 m sum x +
      N m^2``.
    - a stream (one pass): the same algebra around a per-neuron pivot ``c`` (0 for sparse
      streams, the first batch's minimum for dense ones) so that the sums are of ``x - c``
      and the final shift ``m - c`` stays within the neuron's range, which keeps the
      cancellation bounded for raw neurons with large offsets. A stream holds one
      ``(n_neurons, d_embed)`` float64 matrix (``8 * n_neurons * d_embed`` bytes).

    Raises:
        ValueError: empty input, wrong ndim, mismatched image counts or neuron counts across
            batches, NaN/inf in activations or embeddings, a zero-norm embedding, ids that
            differ, a ``min_support`` below 1 or a non-positive ``neuron_chunk_size``.
        TypeError: an input of an unsupported type or dtype.
    """
    if isinstance(min_support, bool) or not isinstance(min_support, int) or min_support < 1:
        raise ValueError(f"min_support must be an int >= 1, got {min_support!r}")
    if neuron_chunk_size is not None and (
        isinstance(neuron_chunk_size, bool)
        or not isinstance(neuron_chunk_size, int)
        or neuron_chunk_size < 1
    ):
        raise ValueError(f"neuron_chunk_size must be a positive int, got {neuron_chunk_size!r}")
    unit = _unit_embeddings(embeddings, device)
    with _GOVERNOR.unit(on_cpu=unit.device.type == "cpu"):
        return _score_neurons(
            activations, unit, image_ids, embedding_ids, min_support, neuron_chunk_size
        )


def _score_neurons(
    activations: Activations,
    unit: Tensor,
    image_ids: Sequence[object] | Tensor | np.ndarray | None,
    embedding_ids: Sequence[object] | Tensor | np.ndarray | None,
    min_support: int,
    neuron_chunk_size: int | None,
) -> MonosemanticityResult:
    """``monosemanticity_score`` on unit-norm embeddings."""
    n_images = int(unit.shape[0])
    _check_ids(image_ids, embedding_ids, n_images)
    e_sum = unit.sum(dim=0)
    threshold = max(2, min_support)

    if is_single_batch(activations):
        batch = to_dense_or_entries(activations, unit.device, where="activations")
        _check_image_count(batch, n_images, where="activations")
        if isinstance(batch, Tensor):
            chunk = neuron_chunk_size or max(1, _BLOCK_ELEMENTS // n_images)
            scores, support = _dense_in_memory(batch, unit, e_sum, chunk, threshold)
        else:
            chunk = neuron_chunk_size or max(1, _PRODUCT_BLOCK_ELEMENTS // int(unit.shape[1]))
            scores, support = _sparse_in_memory(batch, unit, e_sum, chunk, threshold)
    else:
        chunk = neuron_chunk_size or max(1, _PRODUCT_BLOCK_ELEMENTS // int(unit.shape[1]))
        scores, support = _stream(activations, unit, e_sum, chunk, threshold)
    return MonosemanticityResult(
        scores=scores.cpu(), support=support.cpu(), n_images=n_images, min_support=min_support
    )


@dataclass
class _Sums:
    """Per-neuron sums over the explicitly given activations (dense: all; sparse: stored)."""

    pivot: Tensor  # c, float64; 0 whenever some activations are implicit zeros
    n_explicit: Tensor  # int64
    t1: Tensor  # sum (x - c)
    t2: Tensor  # sum (x - c)^2
    min_explicit: Tensor  # min x, +inf if none
    n_at_min: Tensor  # int64, how many explicit x equal min_explicit


def _shift(sums: _Sums, n_images: int) -> tuple[Tensor, Tensor]:
    """Per neuron: ``delta = m - c``, the shift from the pivot to the minimum ``m`` over all
    images, and the support (images above ``m``). Implicit zeros (sparse input, pivot 0) add
    nothing to the sums but take part in the minimum and in the count of images at it."""
    n_implicit = n_images - sums.n_explicit
    has_implicit = n_implicit > 0
    minimum = torch.where(has_implicit, torch.clamp(sums.min_explicit, max=0.0), sums.min_explicit)
    n_at_min = torch.where(sums.min_explicit == minimum, sums.n_at_min, 0) + torch.where(
        has_implicit & (minimum == 0), n_implicit, 0
    )
    return minimum - sums.pivot, n_images - n_at_min


def _square_norms(w: Tensor, delta: Tensor, e_sum: Tensor) -> Tensor:
    """``||sum_n (x_n - m) u_n||^2 = ||w - delta E||^2`` per row of ``w = sum_n (x_n - c) u_n``
    (``w`` is overwritten in the rows that need a shift)."""
    shifted = delta.nonzero().squeeze(1)
    if shifted.numel():
        w[shifted] -= delta[shifted, None] * e_sum
    return torch.linalg.vector_norm(w, dim=1).square()


def _scores(
    sums: _Sums,
    delta: Tensor,
    support: Tensor,
    square_norms: Tensor,
    n_images: int,
    threshold: int,
) -> Tensor:
    """``(||sum y u||^2 - sum y^2) / ((sum y)^2 - sum y^2)`` with ``y = x - m = (x - c) -
    delta``; NaN below the support threshold."""
    s1 = sums.t1 - n_images * delta
    s2 = sums.t2 - 2.0 * delta * sums.t1 + n_images * delta * delta
    numerator = square_norms - s2
    denominator = s1 * s1 - s2
    nan = torch.full_like(numerator, torch.nan)
    return torch.where(support >= threshold, numerator / denominator, nan)


def _dense_in_memory(
    activations: Tensor, unit: Tensor, e_sum: Tensor, chunk: int, threshold: int
) -> tuple[Tensor, Tensor]:
    n_images, n_neurons = (int(s) for s in activations.shape)
    scores, supports = [], []
    for start in range(0, n_neurons, chunk):
        stop = min(start + chunk, n_neurons)
        x = activations[:, start:stop].to(torch.float64)
        _check_dense_finite(x, "activations", row_offset=0, col_offset=start)
        minimum = x.min(dim=0).values
        y = x - minimum
        sums = _Sums(
            pivot=minimum,
            n_explicit=torch.full_like(minimum, n_images, dtype=torch.long),
            t1=y.sum(dim=0),
            t2=torch.linalg.vector_norm(y, dim=0).square(),
            min_explicit=minimum,
            n_at_min=(y == 0).sum(dim=0),
        )
        delta, support = _shift(sums, n_images)
        w = torch.zeros(stop - start, int(unit.shape[1]), dtype=torch.float64, device=y.device)
        _add_weighted_sum(w, y, unit, int(support.sum()))
        square_norms = _square_norms(w, delta, e_sum)
        scores.append(_scores(sums, delta, support, square_norms, n_images, threshold))
        supports.append(support)
    return torch.cat(scores), torch.cat(supports)


def _add_weighted_sum(w: Tensor, y: Tensor, unit: Tensor, n_nonzero: int) -> None:
    """``w += y.T @ unit`` for a dense ``(n_images, n_neurons)`` block ``y`` with
    ``n_nonzero`` non-zeros: a sparse-dense product when they are few (SAE codes held in a
    dense matrix), else one dense matrix product."""
    n_images, n_neurons = (int(s) for s in y.shape)
    if n_nonzero > _SPARSE_FRACTION * y.numel():
        w.addmm_(y.T, unit)
        return
    rows, cols = y.nonzero(as_tuple=True)
    entries, ptr = SparseEntries(rows, cols, y[rows, cols], n_images, n_neurons).sorted_by_neuron()
    block = max(1, _PRODUCT_BLOCK_ELEMENTS // int(unit.shape[1]))
    for start in range(0, n_neurons, block):
        stop = min(start + block, n_neurons)
        w[start:stop].addmm_(neuron_block(entries, ptr, start, stop), unit)


def _entry_sums(entries: SparseEntries) -> _Sums:
    """Raw (pivot 0) per-neuron sums of stored entries."""
    n, cols, values = entries.n_neurons, entries.cols, entries.values
    zeros = torch.zeros(n, dtype=torch.float64, device=values.device)
    minimum = torch.full_like(zeros, torch.inf).scatter_reduce_(0, cols, values, "amin")
    return _Sums(
        pivot=zeros,
        n_explicit=torch.bincount(cols, minlength=n),
        t1=zeros.clone().index_add_(0, cols, values),
        t2=zeros.clone().index_add_(0, cols, values * values),
        min_explicit=minimum,
        n_at_min=torch.bincount(cols[values == minimum[cols]], minlength=n),
    )


def _sparse_in_memory(
    entries: SparseEntries, unit: Tensor, e_sum: Tensor, chunk: int, threshold: int
) -> tuple[Tensor, Tensor]:
    entries, ptr = entries.sorted_by_neuron()
    sums = _entry_sums(entries)
    delta, support = _shift(sums, entries.n_images)
    square_norms = torch.empty_like(delta)
    rows = min(chunk, entries.n_neurons)
    buffer = torch.empty(rows, int(unit.shape[1]), dtype=torch.float64, device=unit.device)
    for start in range(0, entries.n_neurons, chunk):
        stop = min(start + chunk, entries.n_neurons)
        w = torch.mm(neuron_block(entries, ptr, start, stop), unit, out=buffer[: stop - start])
        square_norms[start:stop] = _square_norms(w, delta[start:stop], e_sum)
    return _scores(sums, delta, support, square_norms, entries.n_images, threshold), support


def _stream(
    batches: Activations, unit: Tensor, e_sum: Tensor, chunk: int, threshold: int
) -> tuple[Tensor, Tensor]:
    """One pass over the batches, accumulating ``_Sums`` and ``w`` around a fixed pivot."""
    n_images = int(unit.shape[0])
    offset = 0
    kind: str | None = None
    sums: _Sums | None = None
    w = torch.empty(0)
    for index, raw in enumerate(iter_batches(batches)):
        where = f"activations batch {index}"
        batch = to_dense_or_entries(raw, unit.device, where=where)
        batch_kind = "dense" if isinstance(batch, Tensor) else "sparse"
        n_batch, n_neurons = _batch_shape(batch)
        if kind is None:
            if n_neurons == 0:
                raise ValueError(f"{where} is empty: 0 neurons")
            kind = batch_kind
            w = torch.zeros(n_neurons, int(unit.shape[1]), dtype=torch.float64, device=unit.device)
        elif batch_kind != kind:
            raise TypeError(
                f"{where} is {batch_kind} but the stream started {kind}; a stream must yield "
                "only dense batches or only sparse/top-k batches"
            )
        if n_neurons != int(w.shape[0]):
            raise ValueError(
                f"{where} has {n_neurons} neurons but earlier batches had {int(w.shape[0])}"
            )
        if offset + n_batch > n_images:
            raise ValueError(
                f"{where} brings the stream to {offset + n_batch} images but the embeddings "
                f"have {n_images} rows; activations and embeddings must cover the same images"
            )
        if n_batch == 0:
            continue
        unit_batch = unit[offset : offset + n_batch]
        if isinstance(batch, Tensor):
            x = batch.to(torch.float64)
            _check_dense_finite(x, where, row_offset=offset, col_offset=0)
            pivot = x.min(dim=0).values if sums is None else sums.pivot
            y = x - pivot
            minimum = x.min(dim=0).values
            new = _Sums(
                pivot=pivot,
                n_explicit=torch.full_like(minimum, n_batch, dtype=torch.long),
                t1=y.sum(dim=0),
                t2=torch.linalg.vector_norm(y, dim=0).square(),
                min_explicit=minimum,
                n_at_min=(x == minimum).sum(dim=0),
            )
            _add_weighted_sum(w, y, unit_batch, int(torch.count_nonzero(y)))
        else:
            batch, ptr = batch.sorted_by_neuron()
            new = _entry_sums(batch)
            for start in range(0, n_neurons, chunk):
                stop = min(start + chunk, n_neurons)
                w[start:stop].addmm_(neuron_block(batch, ptr, start, stop), unit_batch)
        sums = new if sums is None else _merge(sums, new)
        offset += n_batch
    if sums is None:
        raise ValueError("activations: the stream yielded no images")
    if offset != n_images:
        raise ValueError(
            f"activations: the stream covered {offset} images but the embeddings have "
            f"{n_images} rows; activations and embeddings must cover the same images"
        )
    delta, support = _shift(sums, n_images)
    square_norms = torch.empty_like(delta)
    for start in range(0, int(w.shape[0]), chunk):
        stop = min(start + chunk, int(w.shape[0]))
        square_norms[start:stop] = _square_norms(w[start:stop], delta[start:stop], e_sum)
    return _scores(sums, delta, support, square_norms, n_images, threshold), support


def _merge(old: _Sums, new: _Sums) -> _Sums:
    minimum = torch.minimum(old.min_explicit, new.min_explicit)
    return _Sums(
        pivot=old.pivot,
        n_explicit=old.n_explicit + new.n_explicit,
        t1=old.t1 + new.t1,
        t2=old.t2 + new.t2,
        min_explicit=minimum,
        n_at_min=torch.where(old.min_explicit == minimum, old.n_at_min, 0)
        + torch.where(new.min_explicit == minimum, new.n_at_min, 0),
    )


def _batch_shape(batch: Tensor | SparseEntries) -> tuple[int, int]:
    if isinstance(batch, Tensor):
        return int(batch.shape[0]), int(batch.shape[1])
    return batch.n_images, batch.n_neurons


def _check_image_count(batch: Tensor | SparseEntries, n_images: int, *, where: str) -> None:
    n_batch, n_neurons = _batch_shape(batch)
    if n_batch != n_images:
        raise ValueError(
            f"{where} cover {n_batch} images but the embeddings have {n_images} rows; "
            "activations (n_images, n_neurons) and embeddings (n_images, d_embed) must list "
            "the same images in the same order"
        )
    if n_neurons == 0:
        raise ValueError(f"{where} are empty: 0 neurons")


def _check_dense_finite(x: Tensor, where: str, *, row_offset: int, col_offset: int) -> None:
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{where}: activation of image {row + row_offset}, neuron {col + col_offset} is "
            f"{float(x[row, col])}; activations must be finite"
        )


def _unit_embeddings(embeddings: Tensor | np.ndarray, device: torch.device | str | None) -> Tensor:
    """Float64 copy of the embeddings with unit-norm rows, on ``device``."""
    if isinstance(embeddings, np.ndarray):
        embeddings = torch.from_numpy(embeddings)
    if not isinstance(embeddings, Tensor):
        raise TypeError(
            f"embeddings must be a (n_images, d_embed) tensor or array, got "
            f"{type(embeddings).__name__}"
        )
    if embeddings.layout != torch.strided:
        raise TypeError(f"embeddings must be dense, got layout {embeddings.layout}")
    if embeddings.dtype == torch.bool or embeddings.dtype.is_complex:
        raise TypeError(f"embeddings must be real-valued, got dtype {embeddings.dtype}")
    if embeddings.ndim != 2:
        raise ValueError(
            f"embeddings must be 2-D (n_images, d_embed), got shape {tuple(embeddings.shape)}"
        )
    if embeddings.shape[0] == 0 or embeddings.shape[1] == 0:
        raise ValueError(f"embeddings are empty: shape {tuple(embeddings.shape)}")
    target = torch.device(device) if device is not None else embeddings.device
    unit = embeddings.to(device=target, dtype=torch.float64)
    norms = torch.linalg.vector_norm(unit, dim=1)
    bad = ~torch.isfinite(norms)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"embedding row {row} contains NaN or inf (or overflows float64); embeddings "
            "must be finite"
        )
    zero = norms == 0
    if bool(zero.any()):
        row = int(zero.nonzero()[0, 0])
        raise ValueError(
            f"embedding row {row} (image {row}) has zero norm, so its cosine similarity is "
            "undefined; a zero embedding means a blank or broken input to the scoring encoder "
            "(the reference's metric.py would score it as cosine 0 with every image)"
        )
    if unit is embeddings:
        return unit / norms[:, None]
    return unit.div_(norms[:, None])


def _as_list(ids: Sequence[object] | Tensor | np.ndarray) -> list[object]:
    if isinstance(ids, (Tensor, np.ndarray)):
        return list(ids.tolist())
    return list(ids)


def _check_ids(
    image_ids: Sequence[object] | Tensor | np.ndarray | None,
    embedding_ids: Sequence[object] | Tensor | np.ndarray | None,
    n_images: int,
) -> None:
    lists = {}
    for name, ids in (("image_ids", image_ids), ("embedding_ids", embedding_ids)):
        if ids is None:
            continue
        lists[name] = _as_list(ids)
        if len(lists[name]) != n_images:
            raise ValueError(
                f"{name} has {len(lists[name])} ids but the embeddings have {n_images} rows"
            )
    if len(lists) < 2:
        return
    image_list, embedding_list = lists["image_ids"], lists["embedding_ids"]
    if image_list == embedding_list:
        return
    at = next(i for i, (a, b) in enumerate(zip(image_list, embedding_list, strict=True)) if a != b)
    same_set = sorted(map(repr, image_list)) == sorted(map(repr, embedding_list))
    hint = (
        "the same ids in a different order: reorder the embedding rows to the activations' "
        "image order"
        if same_set
        else "the two id lists name different images"
    )
    raise ValueError(
        f"image_ids and embedding_ids differ at position {at} "
        f"({image_list[at]!r} vs {embedding_list[at]!r}); {hint}"
    )
