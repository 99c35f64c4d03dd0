"""``sae-vlm demo``: the paper's pipeline end to end, offline, and the findings it measures."""

from sae_vlm_plugin.demo.findings import (
    Finding,
    alignment_with_purity,
    hierarchy_finding,
    neuron_purity,
)
from sae_vlm_plugin.demo.run import (
    DemoConfig,
    concept_purity,
    format_summary,
    label_embeddings,
    run_demo,
    verdict,
)

__all__ = [
    "DemoConfig",
    "Finding",
    "alignment_with_purity",
    "concept_purity",
    "format_summary",
    "hierarchy_finding",
    "label_embeddings",
    "neuron_purity",
    "run_demo",
    "verdict",
]
