"""An SAE's activations on images: token rows, their sparse codes, and per-image vectors.

MS scores images, so every neuron needs one activation per image. The rule here is the same for
an SAE's latents and for the raw neurons of its hook: an image's activation is the mean over the
rows the SAE reads from that image (its token selection: the CLS token, ``k`` random tokens,
every patch ...). For CLS SAEs that is simply the CLS token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

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
    model: Any,
    images: Any,
    hook: str,
    tokens: Any,
    batch_size: int = 64,
    progress: bool = True,
    *,
    skip_unreadable: bool = True,
) -> HookRows:
    """The rows of ``hook`` under token selection ``tokens`` for every readable image (with
    ``skip_unreadable=False``, an unreadable image raises ``ImageReadError`` naming it)."""
    from tqdm.auto import tqdm

    from sae_vlm_plugin.activations import iter_extracted_batches, resolve_hooks
    from sae_vlm_plugin.images import open_image_source
    from sae_vlm_plugin.tokens import TokenSelection

    selection = TokenSelection.parse(tokens.split("@")[0]) if isinstance(tokens, str) else tokens
    source = open_image_source(images)
    points = resolve_hooks(model, [hook], selection)
    rows: list[Tensor] = []
    image_index: list[Tensor] = []
    kept: list[str] = []
    position: dict[int, int] = {}
    bar = tqdm(total=len(source), desc="activations", unit="img", disable=not progress)
    for batch in iter_extracted_batches(
        model,
        source,
        points,
        selection,
        range(len(source)),
        batch_size,
        skip_unreadable=skip_unreadable,
    ):
        for index in batch.image_indices:
            position[index] = len(kept)
            kept.append(source.ids[index])
        if batch.hooks:
            part = batch.hooks[hook]
            rows.append(part.activations.float().cpu())
            image_index.append(torch.tensor([position[int(i)] for i in part.image_index]))
        bar.update(len(batch.image_indices) + len(batch.skipped))
    bar.close()
    if not rows:
        raise ValueError(f"no readable images in {source.description}")
    return HookRows(torch.cat(rows), torch.cat(image_index), kept)


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


def explained_variance(rows: Tensor, reconstruction: Tensor) -> float:
    """``R^2 = 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` over rows (SAELens' definition)."""
    residual = (rows - reconstruction).double().pow(2).sum()
    total = (rows - rows.mean(0)).double().pow(2).sum()
    return float(1 - residual / total)
