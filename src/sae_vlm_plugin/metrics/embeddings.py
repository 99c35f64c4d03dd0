"""Embeddings of the scoring encoder that MS judges image similarity with.

The paper scores with DINOv2 ViT-B (``facebook/dinov2-base``, its pooler output: the final
LayerNorm's CLS token) and, as an alternative, CLIP ViT-B/32 (``image_embeds``). Any model the
plugin wraps can score, through a hook that gives one vector per image. Embeddings can be
cached to disk as an activation cache, which records the image ids next to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class ScoringEncoder:
    """A model and the hook whose per-image vector is the embedding."""

    model: str
    hook: str
    tokens: str = "cls"


SCORING_ENCODERS = {
    "dinov2": ScoringEncoder("facebook/dinov2-base", "hook_post_norm", "cls"),
    "clip": ScoringEncoder("openai/clip-vit-base-patch32", "hook_image_embeds", "cls"),
}
"""The paper's two scoring encoders (DINOv2 ViT-B is its default)."""


@dataclass(frozen=True)
class ImageEmbeddings:
    embeddings: torch.Tensor
    """``(n_images, d)`` float32"""
    image_ids: list[str]


def image_embeddings(
    images: Any,
    encoder: str | Any = "dinov2",
    *,
    hook: str | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> ImageEmbeddings:
    """Embeddings of ``images`` from a scoring encoder, in source order, with their ids.

    ``encoder``: ``"dinov2"`` or ``"clip"`` (``SCORING_ENCODERS``), a hub id / path, or a
    ``VisionModel`` / module (then ``hook`` names the per-image vector; default
    ``hook_post_norm`` with the CLS token). With ``cache_dir`` the embeddings go to (or are
    resumed from) an activation cache there.
    """
    from sae_vlm_plugin.cache import extract_to_cache
    from sae_vlm_plugin.images import open_image_source
    from sae_vlm_plugin.model import VisionModel

    if isinstance(encoder, str) and encoder in SCORING_ENCODERS:
        spec = SCORING_ENCODERS[encoder]
        model, hook, tokens = VisionModel(spec.model), hook or spec.hook, spec.tokens
    else:
        model = encoder if isinstance(encoder, VisionModel) else VisionModel(encoder)
        hook, tokens = hook or "hook_post_norm", "cls"
    if cache_dir is not None:
        cache = extract_to_cache(
            model, images, hook, cache_dir, tokens=tokens, batch_size=batch_size, progress=progress
        )
        return ImageEmbeddings(cache.load()["activations"], cache.image_ids)
    from sae_vlm_plugin.activations import extract_activations

    source = open_image_source(images)
    vectors = extract_activations(
        model, source, hook, tokens=tokens, batch_size=batch_size, progress=progress
    )[hook]
    return ImageEmbeddings(vectors, list(source.ids))
