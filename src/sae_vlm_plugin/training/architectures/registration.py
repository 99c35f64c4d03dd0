"""Registration of the paper architectures with SAELens' training registry."""

from __future__ import annotations

from typing import Any

from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY, register_sae_training_class

from sae_vlm_plugin.training.architectures.config import (
    PAPER_BATCHTOPK_ARCHITECTURE,
    PAPER_MATRYOSHKA_BATCHTOPK_ARCHITECTURE,
    PaperBatchTopKTrainingSAEConfig,
    PaperMatryoshkaBatchTopKTrainingSAEConfig,
)
from sae_vlm_plugin.training.architectures.sae import (
    PaperBatchTopKTrainingSAE,
    PaperMatryoshkaBatchTopKTrainingSAE,
)

TRAINING_ARCHITECTURES: dict[str, tuple[type[Any], type[Any]]] = {
    PAPER_BATCHTOPK_ARCHITECTURE: (PaperBatchTopKTrainingSAE, PaperBatchTopKTrainingSAEConfig),
    PAPER_MATRYOSHKA_BATCHTOPK_ARCHITECTURE: (
        PaperMatryoshkaBatchTopKTrainingSAE,
        PaperMatryoshkaBatchTopKTrainingSAEConfig,
    ),
}
"""The plugin's training architectures. They save for inference as SAELens' ``jumprelu``, so
no inference architecture is registered; SAELens' built-in ``batchtopk`` and
``matryoshka_batchtopk`` stay available under their own names."""


def register_training_architectures() -> None:
    """Register ``paper_batchtopk`` and ``paper_matryoshka_batchtopk`` with SAELens.

    Idempotent (a name already registered to the same classes is skipped); raises ValueError if
    a name is registered to other classes."""
    for name, classes in TRAINING_ARCHITECTURES.items():
        registered = SAE_TRAINING_CLASS_REGISTRY.get(name)
        if registered is None:
            register_sae_training_class(name, *classes)
        elif registered != classes:
            raise ValueError(
                f"SAELens training architecture {name!r} is already registered to "
                f"{registered[0].__module__}.{registered[0].__qualname__}"
            )
