"""Model family adapters: one file per family, behind the ``VisionFamily`` interface."""

from sae_vlm_plugin.families.base import Preprocessor, VisionFamily
from sae_vlm_plugin.families.registry import (
    detect_family,
    get_family,
    list_families,
    load_by_name,
    register_family,
)

__all__ = [
    "Preprocessor",
    "VisionFamily",
    "detect_family",
    "get_family",
    "list_families",
    "load_by_name",
    "register_family",
]
