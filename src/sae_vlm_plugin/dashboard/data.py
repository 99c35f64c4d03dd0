"""What a dashboard shows, gathered once from sparse per-image SAE codes.

Everything per latent is derived from the sparse ``(n_images, d_sae)`` image codes (never a
dense images x latents matrix): the top-``n_top`` images (``top_activations``), density
(fraction of images where the latent fires), max activation, an activation histogram over the
images where it fires, and - for Matryoshka SAEs - its most similar latents by decoder cosine.
For patch-token SAEs the per-patch activations of each latent on its top images are computed by
re-running the model on those images only.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sae_vlm_plugin.metrics.top_activations import top_activations

N_BINS = 24
"""Bins of each latent's activation histogram (over images where it fires, 0 .. max)."""


@dataclass
class DashboardData:
    """Per-latent data of a dashboard; row ``r`` of every tensor is latent ``latents[r]``."""

    image_ids: list[str]
    """Ids of the images the codes were computed on (row order of the codes)."""
    latents: Tensor
    """``(n,)`` long: the SAE latent ids shown."""
    scores: Tensor
    """``(n,)`` MonoSemanticity Score (NaN where unscored: dead or below min support)."""
    support: Tensor
    """``(n,)`` long: images where the latent fires."""
    density: Tensor
    """``(n,)`` fraction of images where the latent fires."""
    max_activation: Tensor
    """``(n,)`` largest per-image activation (0 for dead latents)."""
    top_values: Tensor
    """``(n, n_top)`` float64 activations of the top images, NaN where padded."""
    top_indices: Tensor
    """``(n, n_top)`` long positions into ``image_ids``, -1 where padded."""
    histograms: Tensor
    """``(n, N_BINS)`` long: counts of non-zero activations in equal bins over ``0 .. max``."""
    groups: Tensor | None = None
    """``(n,)`` long Matryoshka level of each latent, or None."""
    similar_indices: Tensor | None = None
    """``(n, n_similar)`` latent ids with the most similar decoder directions, or None."""
    similar_values: Tensor | None = None
    """``(n, n_similar)`` their decoder cosines."""
    heatmaps: Tensor | None = None
    """``(n, n_top, n_patches)`` uint8 per-patch activation (255 = the latent's max over its
    top images' patches), or None for SAEs that do not read patch tokens."""
    heatmap_side: int = 0
    """Patch grid side of the heatmaps (``n_patches = side**2``)."""
    heatmap_peaks: Tensor | None = None
    """``(n,)`` the activation that 255 stands for in each latent's heatmaps."""
    top_labels: list[str] | None = None
    """Per latent, the most common label among its top images with its count ("cat 12/16"),
    when the images have labels."""
    concepts: list[list[tuple[str, float]]] | None = None
    """Per latent, its concept labels with scores, best first (``naming.LatentLabels``)."""
    steering: list[dict[str, Any] | None] | None = None
    """Per latent, its steerability census entry (``steering.census.dashboard_entry``), None
    where the census did not measure it."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Setup shown on the page (model, hook, tokens, d_sae, n_images ...)."""

    @property
    def n_latents(self) -> int:
        return int(self.latents.numel())

    @property
    def n_top(self) -> int:
        return int(self.top_indices.shape[1])

    def check(self) -> None:
        """Raise ValueError if the per-latent tensors disagree in length or point outside."""
        n = self.n_latents
        for name in ("scores", "support", "density", "max_activation", "histograms"):
            value = getattr(self, name)
            if value.shape[0] != n:
                raise ValueError(f"{name} has {value.shape[0]} rows for {n} latents")
        if self.concepts is not None and len(self.concepts) != n:
            raise ValueError(f"concepts has {len(self.concepts)} rows for {n} latents")
        if self.steering is not None and len(self.steering) != n:
            raise ValueError(f"steering has {len(self.steering)} rows for {n} latents")
        if self.top_indices.shape != self.top_values.shape or self.top_indices.shape[0] != n:
            raise ValueError("top_indices and top_values must both be (n_latents, n_top)")
        if self.top_indices.numel() and int(self.top_indices.max()) >= len(self.image_ids):
            raise ValueError(
                f"top image index {int(self.top_indices.max())} is outside the "
                f"{len(self.image_ids)} recorded image ids"
            )


def check_latents(latents: Sequence[int] | Tensor | None, d_sae: int) -> Tensor:
    """The latent ids as a long tensor, all of them when None; ValueError if any is out of range."""
    if latents is None:
        return torch.arange(d_sae)
    if isinstance(latents, range) and latents:  # checked before the list is built
        top = max(latents[0], latents[-1])  # a range's largest element, without walking it
        if top >= d_sae:
            raise ValueError(f"latent {top} is out of range; valid latents are 0..{d_sae - 1}")
    ids = torch.as_tensor(list(latents) if not isinstance(latents, Tensor) else latents)
    ids = ids.long().reshape(-1)
    if ids.numel() == 0:
        raise ValueError("latents is empty; pass None for all latents")
    bad = (ids < 0) | (ids >= d_sae)
    if bool(bad.any()):
        raise ValueError(
            f"latent {int(ids[bad][0])} is out of range; valid latents are 0..{d_sae - 1}"
        )
    if ids.unique().numel() != ids.numel():
        raise ValueError("latents contains duplicates")
    return ids


def group_levels(bounds: Sequence[tuple[int, int]], d_sae: int) -> Tensor | None:
    """Matryoshka level of each of ``d_sae`` latents from ``[(start, stop), ...]``, or None."""
    if not bounds:
        return None
    levels = torch.full((d_sae,), -1, dtype=torch.long)
    for level, (start, stop) in enumerate(bounds):
        levels[start:stop] = level
    return levels


def decoder_neighbours(
    w_dec: Tensor, latents: Tensor, k: int = 5, block: int = 1024
) -> tuple[Tensor, Tensor]:
    """The ``k`` latents whose decoder rows are most cosine-similar to each of ``latents``
    (itself excluded), computed ``block`` query rows at a time: ``(n, k)`` ids and cosines."""
    unit = torch.nn.functional.normalize(w_dec.detach().float(), dim=1)
    k = min(k, unit.shape[0] - 1)
    ids, values = [], []
    for start in range(0, latents.numel(), block):
        query = latents[start : start + block]
        sims = unit[query] @ unit.T
        sims[torch.arange(query.numel()), query] = -math.inf
        top = sims.topk(k, dim=1)
        ids.append(top.indices)
        values.append(top.values)
    if not ids:
        return torch.empty(0, k, dtype=torch.long), torch.empty(0, k)
    return torch.cat(ids), torch.cat(values)


def data_from_codes(
    image_codes: Tensor,
    image_ids: Sequence[str],
    scores: Tensor,
    *,
    latents: Sequence[int] | Tensor | None = None,
    n_top: int = 16,
    groups: Tensor | None = None,
    w_dec: Tensor | None = None,
    n_similar: int = 5,
    image_labels: Sequence[str] | None = None,
    meta: dict[str, Any] | None = None,
) -> DashboardData:
    """Dashboard data from sparse ``(n_images, d_sae)`` codes and the per-latent ``scores``.

    ``w_dec`` (``(d_sae, d_in)``) adds the ``n_similar`` nearest latents by decoder cosine;
    ``image_labels`` (one per image) the most common label of each latent's top images.
    """
    if not image_codes.is_sparse:
        raise TypeError("image_codes must be a sparse COO tensor (n_images, d_sae)")
    n_images, d_sae = (int(s) for s in image_codes.shape)
    if len(image_ids) != n_images:
        raise ValueError(f"{len(image_ids)} image ids for codes of {n_images} images")
    if scores.shape[0] != d_sae:
        raise ValueError(
            f"{scores.shape[0]} scores for codes of {d_sae} latents: the scores and the "
            "activations do not come from the same SAE"
        )
    if image_labels is not None and len(image_labels) != n_images:
        raise ValueError(f"{len(image_labels)} image labels for codes of {n_images} images")
    if w_dec is not None and w_dec.shape[0] != d_sae:
        raise ValueError(
            f"the SAE has {w_dec.shape[0]} latents but the activations have {d_sae}: "
            "the SAE does not match the activations"
        )
    ids = check_latents(latents, d_sae)
    codes = image_codes.coalesce()
    rows, cols = codes.indices()
    values = codes.values().double()
    firing = values > 0
    rows, cols, values = rows[firing], cols[firing], values[firing]
    support_all = torch.bincount(cols, minlength=d_sae)
    max_all = torch.zeros(d_sae, dtype=torch.float64).scatter_reduce(
        0, cols, values, reduce="amax", include_self=True
    )
    top = top_activations(codes, k=n_top)
    # Histogram bins of every stored entry relative to its latent's max.
    scale = max_all[cols].clamp(min=1e-30)
    bins = (values / scale * N_BINS).long().clamp(max=N_BINS - 1)
    histograms = torch.bincount(cols * N_BINS + bins, minlength=d_sae * N_BINS).view(d_sae, N_BINS)
    similar_ids = similar_vals = None
    if w_dec is not None and d_sae > 1:
        similar_ids, similar_vals = decoder_neighbours(w_dec, ids, k=n_similar)
    data = DashboardData(
        image_ids=list(image_ids),
        latents=ids,
        scores=scores.double()[ids],
        support=support_all[ids],
        density=support_all[ids].double() / max(1, n_images),
        max_activation=max_all[ids],
        top_values=top.values[ids],
        top_indices=top.indices[ids],
        histograms=histograms[ids],
        groups=None if groups is None else groups[ids],
        similar_indices=similar_ids,
        similar_values=similar_vals,
        top_labels=None
        if image_labels is None
        else top_label_summary(top.indices[ids], image_labels),
        meta={"d_sae": d_sae, "n_images": n_images, **(meta or {})},
    )
    data.check()
    return data


def top_label_summary(top_indices: Tensor, image_labels: Sequence[str]) -> list[str]:
    """Per row of ``top_indices``, ``"label count/n"`` of its most common image label (ties: the
    label of the better-ranked image), or ``""`` for a latent without top images."""
    summaries = []
    for row in top_indices.tolist():
        labels = [image_labels[i] for i in row if i >= 0]
        if not labels:
            summaries.append("")
            continue
        counts = Counter(labels)
        best = max(counts.values())
        label = next(label for label in labels if counts[label] == best)
        summaries.append(f"{label} {best}/{len(labels)}")
    return summaries
