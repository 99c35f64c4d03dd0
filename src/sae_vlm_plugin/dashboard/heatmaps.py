"""Per-patch activation maps of each latent on its top images (patch-token SAEs only).

Only the union of the shown latents' top images is run through the model again, a few images
at a time; each image's dense ``(n_patches, d_sae)`` codes are computed alone and only the columns
of the latents that rank that image among their top images are kept.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sae_vlm_plugin.images import ImageSource

if TYPE_CHECKING:
    from sae_lens import SAE

    from sae_vlm_plugin.model import VisionModel


def patch_heatmaps(
    sae: SAE,
    model: VisionModel,
    source: ImageSource,
    hook: str,
    latents: Tensor,
    top_indices: Tensor,
    *,
    image_positions: dict[int, int] | None = None,
    batch_size: int = 16,
) -> tuple[Tensor, int, Tensor]:
    """``(n_latents, n_top, n_patches)`` uint8 maps, the grid side ``sqrt(n_patches)`` and the
    ``(n_latents,)`` activation that 255 stands for.

    ``top_indices[r, j]`` is the j-th top image of ``latents[r]`` as a position in the recorded
    image ids (-1 for padding); ``image_positions`` maps those positions to indices of ``source``
    (identity when None). Each latent's maps are scaled so that 255 is its largest patch
    activation over its top images.
    """
    from sae_vlm_plugin.metrics.sae_activations import hook_rows

    positions = image_positions or {}
    pairs = (top_indices >= 0).nonzero()  # (n_pairs, 2): latent row, slot
    images = top_indices[pairs[:, 0], pairs[:, 1]]
    unique = images.unique()
    n_top = int(top_indices.shape[1])
    heat: Tensor | None = None
    n_patches = 0
    for start in range(0, unique.numel(), batch_size):
        chunk = unique[start : start + batch_size]
        pil = [source.load(positions.get(int(i), int(i))) for i in chunk]
        data = hook_rows(model, pil, hook, "patches", batch_size=batch_size, progress=False)
        if data.n_images != len(pil):
            raise ValueError("some top images could not be read again for the patch heatmaps")
        n_patches = len(data.rows) // len(pil)
        if heat is None:
            heat = torch.zeros(top_indices.shape[0], n_top, n_patches)
        local = {int(image): i for i, image in enumerate(chunk)}
        mask = torch.isin(images, chunk)
        rows, slots = pairs[mask, 0], pairs[mask, 1]
        where = torch.tensor([local[int(i)] for i in images[mask]], dtype=torch.long)
        for i in range(len(pil)):
            # One image's dense (n_patches, d_sae) codes at a time: 150 MB at 576 x 65,536.
            take = where == i
            with torch.no_grad():
                codes = sae.encode(data.rows[data.image_index == i].to(sae.W_enc.dtype)).float()
            heat[rows[take], slots[take]] = codes[:, latents[rows[take]]].T
    if heat is None:
        return (
            torch.zeros(top_indices.shape[0], n_top, 0, dtype=torch.uint8),
            0,
            torch.zeros(top_indices.shape[0]),
        )
    side = math.isqrt(n_patches)
    if side * side != n_patches:
        raise ValueError(f"{n_patches} patch tokens do not form a square grid")
    peak = heat.clamp(min=0).amax(dim=(1, 2), keepdim=True).clamp(min=1e-12)
    scaled = (heat.clamp(min=0) / peak * 255).round().to(torch.uint8)
    return scaled, side, peak.view(-1)
