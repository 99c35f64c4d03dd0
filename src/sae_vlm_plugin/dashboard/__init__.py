"""Static offline HTML dashboards of SAE latents on images, and exports to Neuronpedia's
feature JSON and SAEDashboard's data classes.

Importing this package imports nothing heavy (``sae-vlm --help`` reaches ``dashboard.commands``
through it); each name loads its module, and torch, on first use.
"""

from __future__ import annotations

from typing import Any

from sae_vlm_plugin._lazy import lazy_attribute

_LAZY: dict[str, str] = {
    "CollectedDashboard": "sae_vlm_plugin.dashboard.build",
    "build_dashboard": "sae_vlm_plugin.dashboard.build",
    "collect_dashboard": "sae_vlm_plugin.dashboard.build",
    "write_from_data": "sae_vlm_plugin.dashboard.build",
    "DashboardData": "sae_vlm_plugin.dashboard.data",
    "data_from_codes": "sae_vlm_plugin.dashboard.data",
    "export_neuronpedia": "sae_vlm_plugin.dashboard.neuronpedia",
    "export_saedashboard": "sae_vlm_plugin.dashboard.exports",
    "load_saedashboard": "sae_vlm_plugin.dashboard.exports",
    "neuronpedia_features": "sae_vlm_plugin.dashboard.neuronpedia",
    "neuronpedia_source": "sae_vlm_plugin.dashboard.neuronpedia",
    "saedashboard_data": "sae_vlm_plugin.dashboard.exports",
    "write_dashboard": "sae_vlm_plugin.dashboard.html",
}


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _LAZY, name, globals())


__all__ = sorted(_LAZY)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
