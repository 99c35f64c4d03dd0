"""``sae-vlm demo``: the paper's pipeline end to end, offline, and the findings it measures.

- ``run_demo`` / ``DemoConfig`` (``run.py``): the trained toy world by default (``world.py``,
  steering in ``steering.py``), random weights with ``random=True``, or a real checkpoint.
- ``findings.py``: the paper's claims as checks against a labelled world (``Finding``).

Importing this package imports nothing heavy; each name loads its module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "DemoConfig": "sae_vlm_plugin.demo.run",
    "format_summary": "sae_vlm_plugin.demo.run",
    "label_embeddings": "sae_vlm_plugin.demo.run",
    "run_demo": "sae_vlm_plugin.demo.run",
    "small_clip": "sae_vlm_plugin.demo.run",
    "verdict": "sae_vlm_plugin.demo.run",
    "Finding": "sae_vlm_plugin.demo.findings",
    "alignment_with_purity": "sae_vlm_plugin.demo.findings",
    "concept_purity": "sae_vlm_plugin.demo.findings",
    "hierarchy_finding": "sae_vlm_plugin.demo.findings",
    "neuron_purity": "sae_vlm_plugin.demo.findings",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'sae_vlm_plugin.demo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


__all__ = sorted(_LAZY)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
