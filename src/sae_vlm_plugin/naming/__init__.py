"""Naming latents by text: concept labels for every SAE latent from a CLIP-family text tower
(``name_latents``), the latents for a text query (``find_latents``), and the labels' files
(``LatentLabels``). Importing this package imports nothing heavy.
"""

from __future__ import annotations

from typing import Any

from sae_vlm_plugin._lazy import lazy_attribute

_LAZY: dict[str, str] = {
    "ConceptCheck": "sae_vlm_plugin.naming.evaluation",
    "LatentLabels": "sae_vlm_plugin.naming.labels",
    "LatentMatch": "sae_vlm_plugin.naming.labels",
    "TextTower": "sae_vlm_plugin.naming.text_tower",
    "check_labels": "sae_vlm_plugin.naming.evaluation",
    "find_latents": "sae_vlm_plugin.naming.name",
    "load_text_tower": "sae_vlm_plugin.naming.text_tower",
    "load_vocabulary": "sae_vlm_plugin.naming.vocabulary",
    "name_latents": "sae_vlm_plugin.naming.name",
}


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _LAZY, name, globals())


__all__ = sorted(_LAZY)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
