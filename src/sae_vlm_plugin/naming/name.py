"""``name_latents``: concept labels for every SAE latent from a CLIP-family text tower, and
``find_latents``: the latents for a text query.

A latent's vector ``e_j`` in the text tower's space comes from one of two scorers:

- ``"top_images"`` (any SAE; the paper's steering score, ``steering_score.py``): the mean of the
  raw image embeddings ``v_i`` (the text tower's own image embedding) of the latent's ``k`` most
  activating images (images where it fires; image activation = mean over the SAE's tokens),
  less the mean embedding of all the images: ``e_j = normalize(mean_{i in top_k(j)} v_i - vbar)``;
- ``"decoder"`` (SAEs on the text tower's own image embedding, ``hook_image_embeds`` /
  ``hook_pooled``): the decoder direction, ``e_j = normalize(W_dec[j])``.

A concept ``w``'s vector is its unit text embedding less the vocabulary's mean,
``t_w = normalize(u_w - ubar)``, and it scores ``cos(e_j, t_w)`` (``LatentLabels``).

Centring both sides removes what every image and every text share: CLIP's image and text
embeddings lie in two narrow cones apart (the modality gap), and uncentred cosines favour the
words nearest the image cone for every latent (on the toy world, "large" and "small" top most
latents' labels). ``centre=False`` gives the paper's uncentred ``cos(mean v_i, u_w)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sae_vlm_plugin.model import ModelLike, as_vision_model
from sae_vlm_plugin.naming.labels import LABELS_FILE, LatentLabels, LatentMatch, labels_for
from sae_vlm_plugin.naming.text_tower import IMAGE_HOOKS, TextTower, load_text_tower
from sae_vlm_plugin.naming.vocabulary import load_vocabulary

if TYPE_CHECKING:
    from sae_lens import SAE

    from sae_vlm_plugin.images import ImageInput
    from sae_vlm_plugin.model import VisionModel

SCORERS = ("top_images", "decoder")


def name_latents(
    sae: SAE,
    model: ModelLike,
    images: ImageInput | None = None,
    vocabulary: str | Path | Sequence[str] | None = None,
    *,
    text_model: str | Any | TextTower | None = None,
    scorer: str = "top_images",
    templates: Sequence[str] | None = None,
    k: int = 16,
    n_labels: int = 5,
    centre: bool = True,
    hook: str | None = None,
    tokens: str | None = None,
    batch_size: int = 64,
    progress: bool = True,
    force: bool = False,
) -> LatentLabels:
    """Label every latent of ``sae`` (a SAELens SAE on ``model``'s ``hook``) with concept words.

    Args:
        sae, model: the SAE and the ``VisionModel`` it reads.
        images: the images whose top activations name the latents (``"top_images"``; any
            source ``open_image_source`` takes). Not needed by ``"decoder"``.
        vocabulary: concept words (``load_vocabulary``: default ImageNet-1k classes + 255
            attributes; a shipped name, a file, or a list).
        text_model: the CLIP-family model whose towers score (``load_text_tower``: a name, a
            module, or a ``TextTower``); default: ``model`` itself when it is CLIP / SigLIP /
            open_clip. Other families (AIMv2, WebSSL, DINOv2, LLaVA) need one.
        scorer: ``"top_images"`` or ``"decoder"`` (module docstring).
        templates: prompt templates with ``{}`` (default: the bare word, as the paper).
        k: top images per latent (16, the paper's).
        n_labels: labels kept per latent.
        centre: centre the image and text embeddings (module docstring); False for the
            paper's uncentred steering-score cosine.
        hook, tokens: default to the SAE's metadata; ``tokens`` sets the image activation (the
            mean over the selected tokens' codes).
        force: use an SAE whose metadata names another model (``check_attachable``).

    Raises:
        ValueError: an unknown scorer, a model without a text tower and no ``text_model``, a
            decoder scorer on an SAE that does not read the text tower's image embedding.
    """
    model = as_vision_model(model)
    from sae_vlm_plugin.pretrained.loading import check_attachable

    if scorer not in SCORERS:
        raise ValueError(f"unknown scorer {scorer!r}; choose one of {', '.join(SCORERS)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    hook = hook or sae.cfg.metadata.hook_name
    point = check_attachable(sae, model, hook, force=force)
    words = load_vocabulary(vocabulary)
    tower = _text_tower(model, text_model, templates)
    meta: dict[str, Any] = {
        "text_model": tower.name,
        "templates": list(tower.templates),
        "scorer": scorer,
        "centre": centre,
        "model": str(getattr(model, "model_name", "")),
        "hook": point.name,
    }
    if scorer == "decoder":
        latent_vectors = _decoder_vectors(sae, model, point.name, tower)
    else:
        if images is None:
            raise ValueError("the top_images scorer needs images (or use scorer='decoder')")
        tokens = tokens or sae.cfg.metadata.tokens or "cls"
        latent_vectors, n_images = _top_image_vectors(
            sae, model, images, point.name, tokens, tower, k, centre, batch_size, progress
        )
        meta.update(tokens=str(tokens), k=k, n_images=n_images)
    word_vectors = tower.embed(words)
    text_centre = word_vectors.mean(0) if centre else torch.zeros(word_vectors.shape[1])
    return LatentLabels(
        vocabulary=words,
        word_vectors=torch.nn.functional.normalize(word_vectors - text_centre, dim=-1),
        latent_vectors=latent_vectors,
        text_centre=text_centre,
        n_labels=n_labels,
        meta=meta,
    )


def _text_tower(model: VisionModel, text_model: Any, templates: Sequence[str] | None) -> TextTower:
    """``text_model`` as a ``TextTower``; by default the SAE's own model when it has a text tower."""
    if isinstance(text_model, TextTower):
        if templates is None:
            return text_model
        return dataclasses.replace(text_model, templates=tuple(templates))
    if text_model is not None:
        return load_text_tower(text_model, templates=templates)
    family = model.family.name
    if family not in IMAGE_HOOKS:
        raise ValueError(
            f"{model.model_name} is a {family} model, which has no text tower: pass "
            f"text_model= a CLIP-family model ({', '.join(IMAGE_HOOKS)}), e.g. "
            "openai/clip-vit-base-patch32"
        )
    return load_text_tower(model.model_name, templates=templates, device=model.device)


def _top_image_vectors(
    sae: SAE,
    model: VisionModel,
    images: ImageInput,
    hook: str,
    tokens: str,
    tower: TextTower,
    k: int,
    centre: bool,
    batch_size: int,
    progress: bool,
) -> tuple[Tensor, int]:
    """``(d_sae, d)`` unit (centred) mean image embeddings of each latent's top-``k`` images
    (zero rows for latents that never fire), and the number of images."""
    from sae_vlm_plugin.metrics.embeddings import image_embeddings
    from sae_vlm_plugin.metrics.sae_activations import encode_rows, hook_rows, pool_codes
    from sae_vlm_plugin.metrics.top_activations import top_activations

    rows = hook_rows(model, images, hook, tokens, batch_size=batch_size, progress=progress)
    with torch.no_grad():
        codes = encode_rows(sae.encode, rows.rows.to(sae.W_enc.dtype))
    top = top_activations(pool_codes(codes, rows.image_index, rows.n_images), k=k)
    embedded = image_embeddings(
        images, tower.image_model, hook=tower.image_hook, batch_size=batch_size, progress=progress
    )
    where = {image_id: i for i, image_id in enumerate(embedded.image_ids)}
    vectors = embedded.embeddings[[where[i] for i in rows.image_ids]].float()
    valid = top.indices >= 0
    gathered = vectors[top.indices.clamp(min=0)] * valid[..., None]
    means = gathered.sum(1) / valid.sum(1, keepdim=True).clamp(min=1)
    if centre:
        means = (means - vectors.mean(0)) * valid.any(1, keepdim=True)
    return torch.nn.functional.normalize(means, dim=-1), rows.n_images


def _decoder_vectors(sae: SAE, model: VisionModel, hook: str, tower: TextTower) -> Tensor:
    """``(d_sae, d)`` unit decoder directions, for an SAE on the tower's own image embedding."""
    if hook != tower.image_hook or str(model.model_name) != tower.name:
        raise ValueError(
            f"the decoder scorer needs an SAE on the text tower's image embedding "
            f"({tower.image_hook} of {tower.name}); this SAE reads {hook} of "
            f"{model.model_name}: use scorer='top_images'"
        )
    return torch.nn.functional.normalize(sae.W_dec.detach().float().cpu(), dim=-1)


def find_latents(
    sae: SAE,
    query: str,
    *,
    labels: LatentLabels | str | Path | None = None,
    text_model: str | Any | TextTower | None = None,
    top: int = 10,
) -> list[LatentMatch]:
    """The ``top`` latents of ``sae`` ranked by their score for the text ``query`` (best first).
    ``sae`` may be None when the labels alone are at hand (``sae-vlm find``).

    ``labels``: a ``LatentLabels`` or its file / directory (from ``name_latents``). The query's
    embedding is the stored one when it is a vocabulary word, else it is embedded by
    ``text_model`` (default: the labels' ``text_model`` with their templates).

    Raises:
        ValueError: no labels, an SAE of another width, or an empty query.
    """
    if not query.strip():
        raise ValueError("the query is empty")
    if labels is None:
        raise ValueError(
            f"find_latents needs the SAE's labels: pass labels= (a LatentLabels, or the "
            f"{LABELS_FILE} written by name_latents(...).save(dir) / `sae-vlm name`)"
        )
    if sae is None:
        found = labels if isinstance(labels, LatentLabels) else LatentLabels.load(labels)
    else:
        found = labels_for(labels, int(sae.cfg.d_sae))
    return found.find(query_vector(found, query, text_model), top=top)


def query_vector(labels: LatentLabels, query: str, text_model: Any = None) -> Tensor:
    """The (centred) unit text embedding of ``query`` in ``labels``' space: stored for vocabulary
    words, else embedded by ``text_model`` (default: the labels' own text model and templates)."""
    stored = labels.word_vector(query)
    if stored is not None and text_model is None:
        return stored
    tower = (
        text_model
        if isinstance(text_model, TextTower)
        else load_text_tower(
            text_model or labels.meta["text_model"], templates=labels.meta.get("templates")
        )
    )
    return torch.nn.functional.normalize(tower.embed([query])[0] - labels.text_centre, dim=0)


def resolve_concepts(
    latents: Mapping[Any, float], labels: LatentLabels | str | Path | None, d_sae: int
) -> tuple[dict[Any, float], dict[str, LatentMatch]]:
    """``latents`` with every concept-word key replaced by its best latent (``find_latents``'
    first match), and what each word resolved to. Integer keys pass through unchanged.

    Raises:
        ValueError: a word key without labels, or two keys that land on the same latent.
    """
    words = [key for key in latents if isinstance(key, str)]
    if not words:
        return dict(latents), {}
    if labels is None:
        raise ValueError(
            f"latent {words[0]!r} is a concept word: pass labels= (a LatentLabels, or the "
            f"{LABELS_FILE} written by name_latents / `sae-vlm name`) to resolve it"
        )
    found = labels_for(labels, d_sae)
    resolved: dict[Any, float] = {}
    matches: dict[str, LatentMatch] = {}
    for key, value in latents.items():
        if isinstance(key, str):
            match = found.find(query_vector(found, key), top=1)[0]
            matches[key] = match
            key = match.latent
        if key in resolved:
            raise ValueError(f"latent {key} is given twice (a concept word resolved to it)")
        resolved[key] = value
    return resolved, matches
