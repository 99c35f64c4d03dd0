"""``sae-vlm demo``: the paper's pipeline end to end, offline, and the findings it measures.

- ``run_demo`` / ``DemoConfig`` (``run.py``): the trained toy world by default (``world.py``,
  steering in ``steering.py``), random weights with ``random=True``, or a real checkpoint.
- ``findings.py``: the paper's claims as checks against a labelled world (``Finding``).

Importing this package imports nothing heavy; each name loads its module on first use.
"""

from __future__ import annotations

from typing import Any

from sae_vlm_plugin._lazy import lazy_attribute

_LAZY: dict[str, str] = {
    "DemoConfig": "sae_vlm_plugin.demo.shared",
    "format_summary": "sae_vlm_plugin.demo.run",
    "label_embeddings": "sae_vlm_plugin.demo.shared",
    "run_demo": "sae_vlm_plugin.demo.run",
    "small_clip": "sae_vlm_plugin.demo.run",
    "verdict": "sae_vlm_plugin.demo.run",
    "Finding": "sae_vlm_plugin.demo.findings",
    "alignment_with_purity": "sae_vlm_plugin.demo.findings",
    "concept_purity": "sae_vlm_plugin.demo.findings",
    "hierarchy_finding": "sae_vlm_plugin.demo.findings",
    "neuron_purity": "sae_vlm_plugin.demo.findings",
    "seed_findings": "sae_vlm_plugin.demo.findings",
    "single_concept_purity": "sae_vlm_plugin.demo.findings",
}


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _LAZY, name, globals())


__all__ = sorted(_LAZY)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
