"""Static offline HTML dashboards of SAE latents on images, and exports to Neuronpedia's
feature JSON and SAEDashboard's data classes."""

from sae_vlm_plugin.dashboard.build import build_dashboard, write_from_data
from sae_vlm_plugin.dashboard.data import DashboardData, data_from_codes
from sae_vlm_plugin.dashboard.html import write_dashboard

__all__ = [
    "DashboardData",
    "build_dashboard",
    "data_from_codes",
    "write_dashboard",
    "write_from_data",
]
