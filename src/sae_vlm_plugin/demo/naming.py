"""Naming latents by text on the toy world: the toy CLIP's text tower labels the SAE's latents
with the world's words, and the ground truth says whether each concept's latent got its word.

The check is ``naming.check_labels``: a concept's latent is the one whose top-16 images all show
it with the largest R-precision; it is named right when its first label is the concept's word,
and found when ``find`` ranks it first for that word.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from sae_vlm_plugin.demo.findings import Finding


def concept_masks(objects: list[Any], order: list[int]) -> dict[str, Tensor]:
    """Every attribute value of the world -> which images (rows in ``order``) show it."""
    import torch

    from sae_vlm_plugin.toy import ATTRIBUTE_VALUES, ATTRIBUTES

    return {
        value: torch.tensor([objects[i].attributes[a] == value for i in order])
        for a, attribute in enumerate(ATTRIBUTES)
        for value in ATTRIBUTE_VALUES[attribute]
    }


def naming_finding(
    sae: Any,
    model: Any,
    images: list[Any],
    objects: list[Any],
    image_codes: Tensor,
    order: list[int],
    out: Path,
    tokens: str = "cls",
) -> tuple[Any, dict[str, Any], Finding]:
    """Label ``sae``'s latents on ``images`` with the world's words (saved in ``out``), check
    them against the ground truth; returns the labels, the summary entry and the finding."""
    from sae_vlm_plugin.naming.evaluation import check_labels
    from sae_vlm_plugin.naming.name import name_latents

    labels = name_latents(sae, model, images, "toy", tokens=tokens, progress=False)
    labels.save(out)
    checks = check_labels(labels, image_codes, concept_masks(objects, order))
    with_latent = [c for c in checks if c.latent is not None]
    named = sum(c.named_right for c in with_latent)
    found = sum(c.found_right for c in with_latent)
    found_pure = sum(c.found_shows_concept for c in with_latent)
    n = max(1, len(with_latent))
    entry = {
        "n_concepts": len(checks),
        "n_with_latent": len(with_latent),
        "named_right": named / n,
        "found_first": found / n,
        "found_shows_concept": found_pure / n,
        "concepts": [vars(c) for c in checks],
    }
    wrong = [f"{c.concept}->{c.first_label}" for c in with_latent if not c.named_right]
    finding = Finding(
        "naming",
        "a concept's latent is labelled with the concept's word first (toy CLIP text tower)",
        named / n > 0.5,
        f"{named} of {len(with_latent)} concepts with a latent whose top-16 all show it "
        f"({len(checks) - len(with_latent)} of {len(checks)} have none); find ranks that latent "
        f"first for {found}, a latent whose top-16 all show it for {found_pure}"
        + (f"; misnamed: {', '.join(wrong)}" if wrong else ""),
    )
    return labels, entry, finding
