"""How well labels name latents, where each image's concepts are known (the toy world).

For a concept ``c`` with images ``I_c`` (``R = |I_c|`` of them):

- R-precision of latent ``j``: the fraction of its ``R`` most active images that show ``c``;
- the concept's latent: among latents whose top-``k`` images all show ``c``, the one with the
  largest R-precision (the concept's own latent rather than a specialisation such as "red star",
  whose top-16 are as red). A concept without such a latent has none;
- it is named right when its first label is ``c``, and found when ``find`` ranks it first for
  the word ``c``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from sae_vlm_plugin.naming.labels import LatentLabels


@dataclass(frozen=True)
class ConceptCheck:
    """One concept's latent, its first label, and what ``find`` returned for the word."""

    concept: str
    latent: int | None
    """The concept's latent (module docstring), None when no latent's top-k all show it."""
    r_precision: float
    first_label: str | None
    found: int
    """The first latent ``find`` returns for the concept word."""
    found_shows_concept: bool
    """Whether all of ``found``'s top-k images show the concept."""

    @property
    def named_right(self) -> bool:
        return self.latent is not None and self.first_label == self.concept

    @property
    def found_right(self) -> bool:
        return self.latent is not None and self.found == self.latent


def r_precisions(image_codes: Tensor, has_concept: Tensor) -> Tensor:
    """``(d_sae,)`` R-precision of every latent for the concept (module docstring)."""
    from sae_vlm_plugin.metrics.top_activations import top_activations

    r = int(has_concept.sum())
    if r == 0:
        raise ValueError("no image shows the concept")
    top = top_activations(image_codes, k=r)
    valid = top.indices >= 0
    return (has_concept[top.indices.clamp(min=0)] & valid).sum(1).double() / r


def check_labels(
    labels: LatentLabels, image_codes: Tensor, concepts: Mapping[str, Tensor], k: int = 16
) -> list[ConceptCheck]:
    """One ``ConceptCheck`` per concept word of ``concepts`` (word -> ``(n_images,)`` bool: the
    images that show it), from the sparse ``(n_images, d_sae)`` codes the labels were made on."""
    from sae_vlm_plugin.metrics.top_activations import top_activations

    top = top_activations(image_codes, k=k)
    valid = top.indices >= 0
    checks = []
    for concept, has in concepts.items():
        shows = (has[top.indices.clamp(min=0)] & valid).sum(1) == k
        precision = r_precisions(image_codes, has)
        query = labels.word_vector(concept)
        if query is None:
            raise ValueError(f"concept {concept!r} is not in the labels' vocabulary")
        found = labels.find(query, top=1)[0].latent
        latent = None
        if bool(shows.any()):
            latent = int(torch.where(shows, precision, -1.0).argmax())
        checks.append(
            ConceptCheck(
                concept=concept,
                latent=latent,
                r_precision=float(precision[latent]) if latent is not None else 0.0,
                first_label=labels.best_label(latent) if latent is not None else None,
                found=found,
                found_shows_concept=bool(shows[found]),
            )
        )
    return checks
