"""Neuron-level metrics of the paper: MonoSemanticity score, top-activating images, uniqueness
of concepts, Matryoshka hierarchy depth and agreement with the user-study benchmark.

Importing this package imports nothing heavy; each name loads its module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'sae_vlm_plugin.metrics' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
