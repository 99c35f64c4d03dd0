"""sae_vlm_plugin: sparse autoencoders for vision and vision-language models.

A plugin to SAELens, nnsight and SAEDashboard implementing Pach et al., "Sparse Autoencoders
Learn Monosemantic Features in Vision-Language Models" (NeurIPS 2025).

Importing the package only makes its API available (lazily, so that ``import sae_vlm_plugin``
does not pay for torch, SAELens, transformers or nnsight until they are used) and registers with
SAELens what the plugin adds to it - the paper's training architectures and the pretrained
releases - at once if SAELens is already imported, else the moment it is (``_import_hooks``).
It configures no logging, prints nothing and touches no network.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sae_vlm_plugin._import_hooks import when_imported
from sae_vlm_plugin._lazy import lazy_attribute
from sae_vlm_plugin.pretrained.registry import register_pretrained

__version__ = "0.1.0"

# Public name -> module that defines it. Resolved on first attribute access (PEP 562).
_LAZY_API: dict[str, str] = {
    "ActivationCache": "sae_vlm_plugin.cache",
    "MonosemanticityEvaluator": "sae_vlm_plugin.metrics.evaluation",
    "MonosemanticityResult": "sae_vlm_plugin.metrics.monosemanticity",
    "PretrainedSAE": "sae_vlm_plugin.pretrained.loading",
    "TopKCodes": "sae_vlm_plugin.metrics.codes",
    "evaluate_sae": "sae_vlm_plugin.metrics.evaluation",
    "hierarchy_by_level": "sae_vlm_plugin.metrics.hierarchy",
    "image_embeddings": "sae_vlm_plugin.metrics.embeddings",
    "jaccard_uniqueness": "sae_vlm_plugin.metrics.uniqueness",
    "monosemanticity_score": "sae_vlm_plugin.metrics.monosemanticity",
    "score_benchmark": "sae_vlm_plugin.metrics.alignment",
    "top_activations": "sae_vlm_plugin.metrics.top_activations",
    "VisionSAERunnerConfig": "sae_vlm_plugin.training.runner_config",
    "VisionSAETrainingRunner": "sae_vlm_plugin.training.runner",
    "VisionSAESweepRunner": "sae_vlm_plugin.training.sweep",
    "sweep_from_file": "sae_vlm_plugin.training.sweep_config",
    "sweep_from_presets": "sae_vlm_plugin.training.sweep_config",
    "alignment_score": "sae_vlm_plugin.metrics.alignment",
    "build_dashboard": "sae_vlm_plugin.dashboard",
    "check_attachable": "sae_vlm_plugin.pretrained.loading",
    "export_neuronpedia": "sae_vlm_plugin.dashboard",
    "export_saedashboard": "sae_vlm_plugin.dashboard",
    "diffmean_vector": "sae_vlm_plugin.steering.edits",
    "generate": "sae_vlm_plugin.steering.edits",
    "steer": "sae_vlm_plugin.steering.edits",
    "LatentLabels": "sae_vlm_plugin.naming.labels",
    "find_latents": "sae_vlm_plugin.naming.name",
    "name_latents": "sae_vlm_plugin.naming.name",
    "steer_direction": "sae_vlm_plugin.steering.edits",
    "steerability": "sae_vlm_plugin.steering.census",
    "SteerabilityReport": "sae_vlm_plugin.steering.census",
    "latent_activity": "sae_vlm_plugin.steering.activity",
    "export_sae": "sae_vlm_plugin.pretrained.loading",
    "list_presets": "sae_vlm_plugin.training.presets",
    "list_releases": "sae_vlm_plugin.pretrained.registry",
    "load_sae": "sae_vlm_plugin.pretrained.loading",
    "preset_config": "sae_vlm_plugin.training.presets",
    "publish_saes": "sae_vlm_plugin.pretrained.publish",
    "register_releases": "sae_vlm_plugin.pretrained.registry",
    "TokenSelection": "sae_vlm_plugin.tokens",
    "VisionFamily": "sae_vlm_plugin.families.base",
    "VisionModel": "sae_vlm_plugin.model",
    "environment_report": "sae_vlm_plugin.environment",
    "extract_activations": "sae_vlm_plugin.activations",
    "extract_to_cache": "sae_vlm_plugin.cache",
    "list_families": "sae_vlm_plugin.families.registry",
    "open_image_source": "sae_vlm_plugin.images",
    "register_family": "sae_vlm_plugin.families.registry",
}

if TYPE_CHECKING:
    from sae_vlm_plugin.activations import extract_activations as extract_activations
    from sae_vlm_plugin.cache import ActivationCache as ActivationCache
    from sae_vlm_plugin.cache import extract_to_cache as extract_to_cache
    from sae_vlm_plugin.environment import environment_report as environment_report
    from sae_vlm_plugin.families.base import VisionFamily as VisionFamily
    from sae_vlm_plugin.families.registry import list_families as list_families
    from sae_vlm_plugin.families.registry import register_family as register_family
    from sae_vlm_plugin.images import open_image_source as open_image_source
    from sae_vlm_plugin.model import VisionModel as VisionModel
    from sae_vlm_plugin.pretrained.loading import PretrainedSAE as PretrainedSAE
    from sae_vlm_plugin.pretrained.loading import check_attachable as check_attachable
    from sae_vlm_plugin.pretrained.loading import export_sae as export_sae
    from sae_vlm_plugin.pretrained.loading import load_sae as load_sae
    from sae_vlm_plugin.pretrained.publish import publish_saes as publish_saes
    from sae_vlm_plugin.pretrained.registry import list_releases as list_releases
    from sae_vlm_plugin.pretrained.registry import register_releases as register_releases
    from sae_vlm_plugin.steering.activity import latent_activity as latent_activity
    from sae_vlm_plugin.steering.census import SteerabilityReport as SteerabilityReport
    from sae_vlm_plugin.steering.census import steerability as steerability
    from sae_vlm_plugin.steering.edits import diffmean_vector as diffmean_vector
    from sae_vlm_plugin.steering.edits import generate as generate
    from sae_vlm_plugin.steering.edits import steer as steer
    from sae_vlm_plugin.steering.edits import steer_direction as steer_direction
    from sae_vlm_plugin.tokens import TokenSelection as TokenSelection
    from sae_vlm_plugin.training.presets import list_presets as list_presets
    from sae_vlm_plugin.training.presets import preset_config as preset_config
    from sae_vlm_plugin.training.runner import VisionSAETrainingRunner as VisionSAETrainingRunner
    from sae_vlm_plugin.training.runner_config import (
        VisionSAERunnerConfig as VisionSAERunnerConfig,
    )
    from sae_vlm_plugin.training.sweep import VisionSAESweepRunner as VisionSAESweepRunner
    from sae_vlm_plugin.training.sweep_config import sweep_from_file as sweep_from_file
    from sae_vlm_plugin.training.sweep_config import sweep_from_presets as sweep_from_presets

__all__ = ["__version__", *sorted(_LAZY_API)]


def _register_training_architectures() -> None:
    from sae_vlm_plugin.training.registration import register_training_architectures

    register_training_architectures()


when_imported("sae_lens", _register_training_architectures)
register_pretrained()


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _LAZY_API, name, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
