"""Training SAEs as the paper trained them, inside SAELens' training loop.

- ``paper_batchtopk`` / ``paper_matryoshka_batchtopk``: SAELens training architectures that
  reproduce dictionary_learning's BatchTopK and Matryoshka-BatchTopK trainers (the paper's), with a
  sparse hot path; they save for inference as SAELens' plain ``jumprelu``.
- ``prepare_paper_trainer``: the recipe's trainer-level steps on SAELens' ``SAETrainer``.
- ``paper_learning_rate``, ``paper_lr_factor``, ``estimate_paper_scaling_factor``: the recipe's
  numbers.

SAELens' built-in ``batchtopk`` and ``matryoshka_batchtopk`` remain selectable by name.
"""

# SAELens first: finishing its import runs the plugin's registration callback
# (``sae_vlm_plugin._import_hooks``), which imports this package's modules. Importing SAELens
# here, before any of them, lets that callback find them whole instead of half-initialised.
import sae_lens  # noqa: F401

from sae_vlm_plugin.training.config import (
    INATURALIST_GROUP_FRACTIONS,
    PAPER_BATCHTOPK_ARCHITECTURE,
    PAPER_GROUP_FRACTIONS,
    PAPER_MATRYOSHKA_BATCHTOPK_ARCHITECTURE,
    PaperBatchTopKTrainingSAEConfig,
    PaperMatryoshkaBatchTopKTrainingSAEConfig,
    group_sizes_from_fractions,
)
from sae_vlm_plugin.training.paper_sae import (
    PaperBatchTopKTrainingSAE,
    PaperMatryoshkaBatchTopKTrainingSAE,
)
from sae_vlm_plugin.training.paper_trainer import prepare_paper_trainer
from sae_vlm_plugin.training.registration import (
    TRAINING_ARCHITECTURES,
    register_training_architectures,
)
from sae_vlm_plugin.training.scaling import estimate_paper_scaling_factor
from sae_vlm_plugin.training.schedule import paper_learning_rate, paper_lr_factor

__all__ = [
    "INATURALIST_GROUP_FRACTIONS",
    "PAPER_BATCHTOPK_ARCHITECTURE",
    "PAPER_GROUP_FRACTIONS",
    "PAPER_MATRYOSHKA_BATCHTOPK_ARCHITECTURE",
    "TRAINING_ARCHITECTURES",
    "PaperBatchTopKTrainingSAE",
    "PaperBatchTopKTrainingSAEConfig",
    "PaperMatryoshkaBatchTopKTrainingSAE",
    "PaperMatryoshkaBatchTopKTrainingSAEConfig",
    "estimate_paper_scaling_factor",
    "group_sizes_from_fractions",
    "paper_learning_rate",
    "paper_lr_factor",
    "prepare_paper_trainer",
    "register_training_architectures",
]
