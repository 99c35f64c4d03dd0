"""Embeddings of the scoring encoder that MS judges image similarity with.

The paper scores with DINOv2 ViT-B (``facebook/dinov2-base``, its pooler output: the final
LayerNorm's CLS token) and, as an alternative, CLIP ViT-B/32 (``image_embeds``). Any model the
plugin wraps can score, through a hook that gives one vector per image. Embeddings can be
cached to disk as an activation cache, which records the image ids next to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from sae_vlm_plugin.images import ImageInput


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


IMAGE_VECTOR_HOOKS = ("hook_image_embeds", "hook_pooled")
"""Hooks holding one vector per image, preferred in this order for an encoder given by name:
the projected embedding (CLIP, open_clip), else the pooling head's output (SigLIP, AIMv2)."""


@dataclass(frozen=True)
class LoadedScoringEncoder:
    """A scoring encoder ready to embed: the wrapped model, its hook and token selection."""

    model: Any
    """A ``VisionModel``."""
    hook: str
    tokens: str


def load_scoring_encoder(encoder: Any = "dinov2", hook: str | None = None) -> LoadedScoringEncoder:
    """Resolve ``encoder`` (see ``image_embeddings``) to a loaded model, hook and tokens.

    Commands call this before extracting or training, so that a scoring encoder that cannot load
    (offline, a typo) fails first, naming the model. An OSError from loading is re-raised with
    the model's name and what to pass instead (a ValueError, e.g. a folder without a model, likewise). A model without ``hook`` scores with its first
    ``IMAGE_VECTOR_HOOKS`` hook, else with ``hook_post_norm`` at the CLS token (DINOv2's pooler
    output) or, for families without CLS, the mean token.
    """
    from sae_vlm_plugin.model import VisionModel

    if isinstance(encoder, LoadedScoringEncoder):
        return encoder
    if isinstance(encoder, str) and encoder in SCORING_ENCODERS:
        spec = SCORING_ENCODERS[encoder]
        return LoadedScoringEncoder(_load(spec.model), hook or spec.hook, spec.tokens)
    model = encoder if isinstance(encoder, VisionModel) else _load(encoder)
    if hook is not None:
        return LoadedScoringEncoder(model, hook, "cls")
    offered = model.hook_points
    vector_hook = next((name for name in IMAGE_VECTOR_HOOKS if name in offered), None)
    if vector_hook is not None:
        return LoadedScoringEncoder(model, vector_hook, "cls")
    has_cls = model.hook_point("hook_post_norm").has_cls
    return LoadedScoringEncoder(model, "hook_post_norm", "cls" if has_cls else "mean")


def _load(encoder: Any) -> Any:
    from sae_vlm_plugin.model import VisionModel

    try:
        return VisionModel(encoder)
    except (OSError, ValueError) as error:
        kind = OSError if isinstance(error, OSError) else ValueError
        raise kind(
            f"cannot load the scoring encoder {encoder!r} that MS judges image similarity with: "
            f"{' '.join(str(error).split())[:300]}. Offline, pass a local model directory "
            f"(--scoring-encoder PATH) or precomputed embeddings; the paper's encoders: "
            + ", ".join(f"{key} = {spec.model}" for key, spec in SCORING_ENCODERS.items())
        ) from error


@dataclass(frozen=True)
class ImageEmbeddings:
    embeddings: torch.Tensor
    """``(n_images, d)`` float32"""
    image_ids: list[str]


def image_embeddings(
    images: ImageInput,
    encoder: str | Any = "dinov2",
    *,
    hook: str | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> ImageEmbeddings:
    """Embeddings of ``images`` from a scoring encoder, in source order, with their ids.

    ``encoder``: ``"dinov2"`` or ``"clip"`` (``SCORING_ENCODERS``), a hub id / path, a
    ``VisionModel`` / module, or a ``LoadedScoringEncoder``; ``hook`` names the per-image vector
    (default: see ``load_scoring_encoder``). With ``cache_dir`` the embeddings go to (or are
    resumed from) an activation cache there.
    """
    from sae_vlm_plugin.cache import extract_to_cache
    from sae_vlm_plugin.images import open_image_source

    scorer = load_scoring_encoder(encoder, hook)
    model, hook, tokens = scorer.model, scorer.hook, scorer.tokens
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
