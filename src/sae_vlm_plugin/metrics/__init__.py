"""Neuron-level metrics of the paper: MonoSemanticity score, top-activating images, uniqueness
of concepts, Matryoshka hierarchy depth and agreement with the user-study benchmark.

Importing this package imports nothing heavy; each name loads its module on first use.
"""

from __future__ import annotations

from typing import Any

from sae_vlm_plugin._lazy import lazy_attribute

_LAZY: dict[str, str] = {
    "TopKCodes": "sae_vlm_plugin.metrics.codes",
    "MonosemanticityResult": "sae_vlm_plugin.metrics.monosemanticity",
    "monosemanticity_score": "sae_vlm_plugin.metrics.monosemanticity",
    "TopActivations": "sae_vlm_plugin.metrics.top_activations",
    "top_activations": "sae_vlm_plugin.metrics.top_activations",
    "UniquenessResult": "sae_vlm_plugin.metrics.uniqueness",
    "jaccard_uniqueness": "sae_vlm_plugin.metrics.uniqueness",
    "LevelStats": "sae_vlm_plugin.metrics.hierarchy",
    "Taxonomy": "sae_vlm_plugin.metrics.hierarchy",
    "hierarchy_by_level": "sae_vlm_plugin.metrics.hierarchy",
    "mean_lca_depth": "sae_vlm_plugin.metrics.hierarchy",
    "parse_inat_folder_name": "sae_vlm_plugin.metrics.hierarchy",
    "AlignmentBin": "sae_vlm_plugin.metrics.alignment",
    "AlignmentResult": "sae_vlm_plugin.metrics.alignment",
    "BenchmarkPairs": "sae_vlm_plugin.metrics.alignment",
    "alignment_score": "sae_vlm_plugin.metrics.alignment",
    "load_benchmark_activations": "sae_vlm_plugin.metrics.alignment",
    "load_benchmark_pairs": "sae_vlm_plugin.metrics.alignment",
    "load_benchmark_top_images": "sae_vlm_plugin.metrics.alignment",
    "recompute_benchmark_ms": "sae_vlm_plugin.metrics.alignment",
    "score_benchmark": "sae_vlm_plugin.metrics.alignment",
}


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _LAZY, name, globals())


__all__ = sorted(_LAZY)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
