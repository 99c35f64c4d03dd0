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
from sae_vlm_plugin._version import __version__
from sae_vlm_plugin.pretrained.registry import register_pretrained

# Public name -> module that defines it. Resolved on first attribute access (PEP 562).
_LAZY_API: dict[str, str] = {
    "extract_activations": "sae_vlm_plugin.activations",
    "ActivationCache": "sae_vlm_plugin.cache.read",
    "verify_cache": "sae_vlm_plugin.cache.verify",
    "extract_to_cache": "sae_vlm_plugin.cache.write",
    "build_dashboard": "sae_vlm_plugin.dashboard.build",
    "export_saedashboard": "sae_vlm_plugin.dashboard.exports",
    "export_neuronpedia": "sae_vlm_plugin.dashboard.neuronpedia",
    "environment_report": "sae_vlm_plugin.environment",
    "VisionFamily": "sae_vlm_plugin.families.base",
    "list_families": "sae_vlm_plugin.families.registry",
    "register_family": "sae_vlm_plugin.families.registry",
    "ImageSource": "sae_vlm_plugin.images.source",
    "ImageStream": "sae_vlm_plugin.images.stream",
    "open_image_source": "sae_vlm_plugin.images.open",
    "open_images": "sae_vlm_plugin.images.open",
    "alignment_score": "sae_vlm_plugin.metrics.alignment",
    "score_benchmark": "sae_vlm_plugin.metrics.alignment",
    "TopKCodes": "sae_vlm_plugin.metrics.codes",
    "image_embeddings": "sae_vlm_plugin.metrics.embeddings",
    "MonosemanticityEvaluator": "sae_vlm_plugin.metrics.evaluation",
    "evaluate_sae": "sae_vlm_plugin.metrics.evaluation",
    "hierarchy_by_level": "sae_vlm_plugin.metrics.hierarchy",
    "MonosemanticityResult": "sae_vlm_plugin.metrics.monosemanticity",
    "monosemanticity_score": "sae_vlm_plugin.metrics.monosemanticity",
    "top_activations": "sae_vlm_plugin.metrics.top_activations",
    "jaccard_uniqueness": "sae_vlm_plugin.metrics.uniqueness",
    "VisionModel": "sae_vlm_plugin.model",
    "LatentLabels": "sae_vlm_plugin.naming.labels",
    "find_latents": "sae_vlm_plugin.naming.name",
    "name_latents": "sae_vlm_plugin.naming.name",
    "PretrainedSAE": "sae_vlm_plugin.pretrained.loading",
    "check_attachable": "sae_vlm_plugin.pretrained.loading",
    "export_sae": "sae_vlm_plugin.pretrained.loading",
    "load_sae": "sae_vlm_plugin.pretrained.loading",
    "publish_saes": "sae_vlm_plugin.pretrained.publish",
    "list_releases": "sae_vlm_plugin.pretrained.registry",
    "register_releases": "sae_vlm_plugin.pretrained.registry",
    "latent_activity": "sae_vlm_plugin.steering.activity",
    "SteerabilityReport": "sae_vlm_plugin.steering.census",
    "steerability": "sae_vlm_plugin.steering.census",
    "diffmean_vector": "sae_vlm_plugin.steering.edits",
    "generate": "sae_vlm_plugin.steering.edits",
    "steer": "sae_vlm_plugin.steering.edits",
    "steer_direction": "sae_vlm_plugin.steering.edits",
    "TokenSelection": "sae_vlm_plugin.tokens",
    "list_presets": "sae_vlm_plugin.training.presets",
    "preset_config": "sae_vlm_plugin.training.presets",
    "VisionSAETrainingRunner": "sae_vlm_plugin.training.runner",
    "VisionSAERunnerConfig": "sae_vlm_plugin.training.runner_config",
    "VisionLoggingConfig": "sae_vlm_plugin.training.runner_config",
    "VisionSAESweepRunner": "sae_vlm_plugin.training.sweep",
    "sweep_from_file": "sae_vlm_plugin.training.sweep_config",
    "sweep_from_presets": "sae_vlm_plugin.training.sweep_config",
}

if TYPE_CHECKING:
    from sae_vlm_plugin.activations import extract_activations as extract_activations
    from sae_vlm_plugin.cache.read import ActivationCache as ActivationCache
    from sae_vlm_plugin.cache.verify import verify_cache as verify_cache
    from sae_vlm_plugin.cache.write import extract_to_cache as extract_to_cache
    from sae_vlm_plugin.dashboard.build import build_dashboard as build_dashboard
    from sae_vlm_plugin.dashboard.exports import export_saedashboard as export_saedashboard
    from sae_vlm_plugin.dashboard.neuronpedia import export_neuronpedia as export_neuronpedia
    from sae_vlm_plugin.environment import environment_report as environment_report
    from sae_vlm_plugin.families.base import VisionFamily as VisionFamily
    from sae_vlm_plugin.families.registry import list_families as list_families
    from sae_vlm_plugin.families.registry import register_family as register_family
    from sae_vlm_plugin.images.open import open_image_source as open_image_source
    from sae_vlm_plugin.images.open import open_images as open_images
    from sae_vlm_plugin.images.source import ImageSource as ImageSource
    from sae_vlm_plugin.images.stream import ImageStream as ImageStream
    from sae_vlm_plugin.metrics.alignment import alignment_score as alignment_score
    from sae_vlm_plugin.metrics.alignment import score_benchmark as score_benchmark
    from sae_vlm_plugin.metrics.codes import TopKCodes as TopKCodes
    from sae_vlm_plugin.metrics.embeddings import image_embeddings as image_embeddings
    from sae_vlm_plugin.metrics.evaluation import (
        MonosemanticityEvaluator as MonosemanticityEvaluator,
    )
    from sae_vlm_plugin.metrics.evaluation import evaluate_sae as evaluate_sae
    from sae_vlm_plugin.metrics.hierarchy import hierarchy_by_level as hierarchy_by_level
    from sae_vlm_plugin.metrics.monosemanticity import (
        MonosemanticityResult as MonosemanticityResult,
    )
    from sae_vlm_plugin.metrics.monosemanticity import (
        monosemanticity_score as monosemanticity_score,
    )
    from sae_vlm_plugin.metrics.top_activations import top_activations as top_activations
    from sae_vlm_plugin.metrics.uniqueness import jaccard_uniqueness as jaccard_uniqueness
    from sae_vlm_plugin.model import VisionModel as VisionModel
    from sae_vlm_plugin.naming.labels import LatentLabels as LatentLabels
    from sae_vlm_plugin.naming.name import find_latents as find_latents
    from sae_vlm_plugin.naming.name import name_latents as name_latents
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
    from sae_vlm_plugin.training.runner_config import VisionLoggingConfig as VisionLoggingConfig
    from sae_vlm_plugin.training.runner_config import VisionSAERunnerConfig as VisionSAERunnerConfig
    from sae_vlm_plugin.training.sweep import VisionSAESweepRunner as VisionSAESweepRunner
    from sae_vlm_plugin.training.sweep_config import sweep_from_file as sweep_from_file
    from sae_vlm_plugin.training.sweep_config import sweep_from_presets as sweep_from_presets

__all__ = ["__version__", *sorted(_LAZY_API)]


def _register_training_architectures() -> None:
    from sae_vlm_plugin.training.architectures.registration import register_training_architectures

    register_training_architectures()


when_imported("sae_lens", _register_training_architectures)
register_pretrained()


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _LAZY_API, name, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
