"""Model family adapters: one file per family, behind the ``VisionFamily`` interface.

Importing this package imports nothing heavy (``sae-vlm``'s parser imports its ``commands``);
each name loads its module on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sae_vlm_plugin._lazy import lazy_attribute

_LAZY_API: dict[str, str] = {
    "Preprocessor": "sae_vlm_plugin.families.base",
    "VisionFamily": "sae_vlm_plugin.families.base",
    "detect_family": "sae_vlm_plugin.families.registry",
    "get_family": "sae_vlm_plugin.families.registry",
    "list_families": "sae_vlm_plugin.families.registry",
    "load_by_name": "sae_vlm_plugin.families.registry",
    "register_family": "sae_vlm_plugin.families.registry",
}

if TYPE_CHECKING:
    from sae_vlm_plugin.families.base import Preprocessor as Preprocessor
    from sae_vlm_plugin.families.base import VisionFamily as VisionFamily
    from sae_vlm_plugin.families.registry import detect_family as detect_family
    from sae_vlm_plugin.families.registry import get_family as get_family
    from sae_vlm_plugin.families.registry import list_families as list_families
    from sae_vlm_plugin.families.registry import load_by_name as load_by_name
    from sae_vlm_plugin.families.registry import register_family as register_family

__all__ = sorted(_LAZY_API)


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _LAZY_API, name, globals())
