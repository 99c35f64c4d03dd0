"""An SAE's activations on images: token rows, their sparse codes, and per-image vectors.

MS scores images, so every neuron needs one activation per image. The rule here is the same for
an SAE's latents and for the raw neurons of its hook: an image's activation is the mean over the
rows the SAE reads from that image (its token selection: the CLS token, ``k`` random tokens,
every patch ...). For CLS SAEs that is simply the CLS token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from sae_vlm_plugin.images import ImageInput
    from sae_vlm_plugin.model import VisionModel

Encoder = Callable[[Tensor], Tensor]
"""``(rows, d_in) -> (rows, d_sae)`` codes (an SAE's inference encode, maybe after scaling)."""


@dataclass(frozen=True)
class HookRows:
    """Rows of one hook on a set of images, grouped by image in source order."""

    rows: Tensor
    """``(n_rows, d_in)`` float32"""
    image_index: Tensor
    """``(n_rows,)`` position of each row's image in ``image_ids``"""
    image_ids: list[str]

    @property
    def n_images(self) -> int:
        return len(self.image_ids)

    def image_means(self) -> Tensor:
        """``(n_images, d_in)``: the mean of each image's rows."""
        return _mean_by_image(self.rows, self.image_index, self.n_images)


def hook_rows(
    model: VisionModel,
    images: ImageInput,
    hook: str,
    tokens: Any,
    batch_size: int = 64,
    progress: bool = True,
    *,
    skip_unreadable: bool = True,
) -> HookRows:
    """The rows of ``hook`` under token selection ``tokens`` for every readable image (with
    ``skip_unreadable=False``, an unreadable image raises ``ImageReadError`` naming it)."""
    rows: list[Tensor] = []
    image_index: list[Tensor] = []
    kept: list[str] = []
    for image_ids, activations, local_index in _image_batches(
        model, images, hook, tokens, batch_size, progress, skip_unreadable
    ):
        rows.append(activations.float().cpu())
        image_index.append(local_index.cpu() + len(kept))
        kept.extend(image_ids)
    return HookRows(torch.cat(rows), torch.cat(image_index), kept)


def _image_batches(
    model: VisionModel,
    images: ImageInput,
    hook: str,
    tokens: Any,
    batch_size: int,
    progress: bool,
    skip_unreadable: bool,
) -> Iterator[tuple[list[str], Tensor, Tensor]]:
    """Per batch of readable images: their ids, ``hook``'s rows under ``tokens`` and each row's
    image as a position in those ids; raises ValueError if no image is readable."""
    from sae_vlm_plugin.activations import iter_source_batches, resolve_hooks
    from sae_vlm_plugin.images import open_image_source
    from sae_vlm_plugin.tokens import TokenSelection

    selection = TokenSelection.parse(tokens.split("@")[0]) if isinstance(tokens, str) else tokens
    source = open_image_source(images)
    points = resolve_hooks(model, [hook], selection)
    for batch in iter_source_batches(
        model,
        source,
        points,
        selection,
        batch_size,
        skip_unreadable=skip_unreadable,
        progress=progress,
        description="activations",
    ):
        if not batch.hooks:
            continue
        part = batch.hooks[hook]
        local = {int(index): i for i, index in enumerate(batch.image_indices)}
        positions = torch.tensor([local[int(i)] for i in part.image_index])
        yield [source.ids[i] for i in batch.image_indices], part.activations, positions


@dataclass(frozen=True)
class ImageActivations:
    """An SAE on a set of images, reduced while streaming: per-image means and run totals."""

    image_ids: list[str]
    """The readable images, in source order."""
    image_codes: Tensor
    """Sparse ``(n_images, d_sae)``: the mean of each image's code rows."""
    image_raw: Tensor
    """``(n_images, d_in)`` float32: the mean of each image's hook rows."""
    n_rows: int
    n_active: int
    """Non-zero codes over every row (``L0 = n_active / n_rows``)."""
    fired: Tensor
    """``(d_sae,)`` bool: latents active on some row."""
    explained_variance: float
    """``R^2 = 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` over every row (SAELens'
    definition)."""

    @property
    def n_images(self) -> int:
        return len(self.image_ids)


def image_activations(
    model: VisionModel,
    images: ImageInput,
    hook: str,
    tokens: Any,
    encode: Encoder,
    decode: Callable[[Tensor], Tensor],
    *,
    batch_size: int = 64,
    row_block: int = 4096,
    progress: bool = True,
    skip_unreadable: bool = True,
) -> ImageActivations:
    """The SAE (``encode`` / ``decode``) on ``hook``'s rows under ``tokens``, one image batch at
    a time: no more than ``batch_size`` images' rows (encoded ``row_block`` rows at a time) are
    held, so every token of 50,000 images (577 each for CLIP-L/336) fits in memory.

    ``R^2 = 1 - sum ||x - x_hat||^2 / sum_d (sum x_d^2 - (sum x_d)^2 / n)``, accumulated in
    float64 (the denominator is ``sum ||x - mean(x)||^2`` written with running sums).
    """
    kept: list[str] = []
    pooled: list[Tensor] = []
    raw: list[Tensor] = []
    n_rows = n_active = 0
    fired: Tensor | None = None
    residual = 0.0
    sums: Tensor | None = None
    squares = 0.0
    for image_ids, activations, image in _image_batches(
        model, images, hook, tokens, batch_size, progress, skip_unreadable
    ):
        rows = activations.float()
        n_batch = len(image_ids)
        kept.extend(image_ids)
        code_sums: Tensor | None = None
        with torch.no_grad():
            for start in range(0, len(rows), row_block):
                block = rows[start : start + row_block]
                codes = encode(block)
                reconstruction = decode(codes).to(device=block.device, dtype=torch.float32)
                residual += float((block - reconstruction).double().pow(2).sum())
                n_active += int((codes != 0).sum())
                active = (codes != 0).any(dim=0).cpu()
                fired = active if fired is None else fired | active
                block_sums = torch.zeros(n_batch, codes.shape[1], dtype=torch.float32)
                block_sums.index_add_(0, image[start : start + row_block], codes.float().cpu())
                code_sums = block_sums if code_sums is None else code_sums + block_sums
        assert code_sums is not None
        counts = torch.bincount(image, minlength=n_batch).clamp(min=1).float()
        pooled.append((code_sums / counts[:, None]).to_sparse())
        raw.append(_mean_by_image(rows.cpu(), image, n_batch))
        sums = rows.double().sum(0) if sums is None else sums + rows.double().sum(0)
        squares += float(rows.double().pow(2).sum())
        n_rows += len(rows)
    # _image_batches yields at least one batch
    assert sums is not None
    assert fired is not None
    total = squares - float(sums.pow(2).sum()) / n_rows
    return ImageActivations(
        image_ids=kept,
        image_codes=torch.cat(pooled).coalesce(),
        image_raw=torch.cat(raw),
        n_rows=n_rows,
        n_active=n_active,
        fired=fired,
        explained_variance=1 - residual / total,
    )


def encode_rows(encode: Encoder, rows: Tensor, batch_size: int = 4096) -> Tensor:
    """Codes of ``rows`` as a sparse COO ``(n_rows, d_sae)`` tensor, encoded ``batch_size`` at a time."""
    indices, values, d_sae = [], [], 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            codes = encode(rows[start : start + batch_size])
            d_sae = codes.shape[1]
            nonzero = codes.nonzero(as_tuple=True)
            indices.append(torch.stack([nonzero[0] + start, nonzero[1]]).cpu())
            values.append(codes[nonzero].float().cpu())
    return torch.sparse_coo_tensor(
        torch.cat(indices, 1), torch.cat(values), (len(rows), d_sae), check_invariants=False
    ).coalesce()


def pool_codes(codes: Tensor, image_index: Tensor, n_images: int) -> Tensor:
    """Sparse ``(n_images, d_sae)`` mean of each image's code rows."""
    rows_per_image = torch.bincount(image_index, minlength=n_images).clamp(min=1).float()
    row, latent = codes.indices()
    image = image_index[row]
    values = codes.values() / rows_per_image[image]
    return torch.sparse_coo_tensor(
        torch.stack([image, latent]), values, (n_images, codes.shape[1]), check_invariants=False
    ).coalesce()


def _mean_by_image(rows: Tensor, image_index: Tensor, n_images: int) -> Tensor:
    sums = torch.zeros(n_images, rows.shape[1], dtype=rows.dtype).index_add_(0, image_index, rows)
    counts = torch.bincount(image_index, minlength=n_images).clamp(min=1).to(rows.dtype)
    return sums / counts.unsqueeze(1)
