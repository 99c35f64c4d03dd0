"""Static offline HTML dashboards of SAE latents on images, and exports to Neuronpedia's
feature JSON and SAEDashboard's data classes."""

from sae_vlm_plugin.dashboard.build import (
    CollectedDashboard,
    build_dashboard,
    collect_dashboard,
    write_from_data,
)
from sae_vlm_plugin.dashboard.data import DashboardData, data_from_codes
from sae_vlm_plugin.dashboard.exports import (
    export_neuronpedia,
    export_saedashboard,
    saedashboard_data,
)
from sae_vlm_plugin.dashboard.html import write_dashboard

__all__ = [
    "CollectedDashboard",
    "DashboardData",
    "build_dashboard",
    "collect_dashboard",
    "data_from_codes",
    "export_neuronpedia",
    "export_saedashboard",
    "saedashboard_data",
    "write_dashboard",
    "write_from_data",
]
