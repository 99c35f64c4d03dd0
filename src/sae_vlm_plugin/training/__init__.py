"""Training SAEs as the paper trained them, inside SAELens' training loop.

- ``paper_batchtopk`` / ``paper_matryoshka_batchtopk``: SAELens training architectures that
  reproduce dictionary_learning's BatchTopK and Matryoshka-BatchTopK trainers (the paper's), with a
  sparse hot path; they save for inference as SAELens' plain ``jumprelu``.
- ``prepare_paper_trainer``: the recipe's trainer-level steps on SAELens' ``SAETrainer``.
- ``paper_learning_rate``, ``paper_lr_factor``, ``estimate_paper_scaling_factor``: the recipe's
  numbers.

SAELens' built-in ``batchtopk`` and ``matryoshka_batchtopk`` remain selectable by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sae_vlm_plugin._lazy import lazy_attribute

_LAZY_API: dict[str, str] = {
    "INATURALIST_GROUP_FRACTIONS": "sae_vlm_plugin.training.architectures.config",
    "PAPER_BATCHTOPK_ARCHITECTURE": "sae_vlm_plugin.training.architectures.config",
    "PAPER_GROUP_FRACTIONS": "sae_vlm_plugin.training.architectures.config",
    "PAPER_MATRYOSHKA_BATCHTOPK_ARCHITECTURE": "sae_vlm_plugin.training.architectures.config",
    "PaperBatchTopKTrainingSAE": "sae_vlm_plugin.training.architectures.sae",
    "PaperBatchTopKTrainingSAEConfig": "sae_vlm_plugin.training.architectures.config",
    "PaperMatryoshkaBatchTopKTrainingSAE": "sae_vlm_plugin.training.architectures.sae",
    "PaperMatryoshkaBatchTopKTrainingSAEConfig": "sae_vlm_plugin.training.architectures.config",
    "TRAINING_ARCHITECTURES": "sae_vlm_plugin.training.architectures.registration",
    "estimate_paper_scaling_factor": "sae_vlm_plugin.training.scaling",
    "group_sizes_from_fractions": "sae_vlm_plugin.training.architectures.config",
    "paper_learning_rate": "sae_vlm_plugin.training.schedule",
    "paper_lr_factor": "sae_vlm_plugin.training.schedule",
    "prepare_paper_trainer": "sae_vlm_plugin.training.architectures.trainer",
    "register_training_architectures": "sae_vlm_plugin.training.architectures.registration",
}

if TYPE_CHECKING:
    from sae_vlm_plugin.training.architectures.config import (
        INATURALIST_GROUP_FRACTIONS as INATURALIST_GROUP_FRACTIONS,
    )
    from sae_vlm_plugin.training.architectures.config import (
        PAPER_BATCHTOPK_ARCHITECTURE as PAPER_BATCHTOPK_ARCHITECTURE,
    )
    from sae_vlm_plugin.training.architectures.config import (
        PAPER_GROUP_FRACTIONS as PAPER_GROUP_FRACTIONS,
    )
    from sae_vlm_plugin.training.architectures.config import (
        PAPER_MATRYOSHKA_BATCHTOPK_ARCHITECTURE as PAPER_MATRYOSHKA_BATCHTOPK_ARCHITECTURE,
    )
    from sae_vlm_plugin.training.architectures.config import (
        PaperBatchTopKTrainingSAEConfig as PaperBatchTopKTrainingSAEConfig,
    )
    from sae_vlm_plugin.training.architectures.config import (
        PaperMatryoshkaBatchTopKTrainingSAEConfig as PaperMatryoshkaBatchTopKTrainingSAEConfig,
    )
    from sae_vlm_plugin.training.architectures.config import (
        group_sizes_from_fractions as group_sizes_from_fractions,
    )
    from sae_vlm_plugin.training.architectures.registration import (
        TRAINING_ARCHITECTURES as TRAINING_ARCHITECTURES,
    )
    from sae_vlm_plugin.training.architectures.registration import (
        register_training_architectures as register_training_architectures,
    )
    from sae_vlm_plugin.training.architectures.sae import (
        PaperBatchTopKTrainingSAE as PaperBatchTopKTrainingSAE,
    )
    from sae_vlm_plugin.training.architectures.sae import (
        PaperMatryoshkaBatchTopKTrainingSAE as PaperMatryoshkaBatchTopKTrainingSAE,
    )
    from sae_vlm_plugin.training.architectures.trainer import (
        prepare_paper_trainer as prepare_paper_trainer,
    )
    from sae_vlm_plugin.training.scaling import (
        estimate_paper_scaling_factor as estimate_paper_scaling_factor,
    )
    from sae_vlm_plugin.training.schedule import paper_learning_rate as paper_learning_rate
    from sae_vlm_plugin.training.schedule import paper_lr_factor as paper_lr_factor

__all__ = sorted(_LAZY_API)


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _LAZY_API, name, globals())
