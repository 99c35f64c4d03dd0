"""What a ``VisionSAERunnerConfig`` describes: its activation stream and its training SAE."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from sae_vlm_plugin.distributed import DataParallel
from sae_vlm_plugin.training.runner_config import VisionSAERunnerConfig

if TYPE_CHECKING:
    from sae_vlm_plugin.model import VisionModel


@dataclass(frozen=True)
class ActivationSource:
    """Where a run's activations come from, and what to record about them."""

    d_in: int
    model_name: str
    family: str
    hook_name: str
    tokens: str
    dataset: str
    make_batches: Callable[[int], Iterator[torch.Tensor]]
    """``seed -> endless iterator of batches``, deterministic in the seed: the global
    ``(batch_size, d_in)`` batches, or under data parallelism this rank's equal share of each."""


def activation_source(
    cfg: VisionSAERunnerConfig,
    model: VisionModel | None = None,
    parallel: DataParallel | None = None,
) -> ActivationSource:
    """The activation stream ``cfg`` describes (``model``: an already built ``VisionModel``;
    ``parallel``: this process' rank, whose share of each batch the stream yields)."""
    parallel = parallel or DataParallel()
    if cfg.cached_activations_path is not None:
        from sae_vlm_plugin.cache import ActivationCache
        from sae_vlm_plugin.families.registry import model_reference

        cache = ActivationCache(cfg.cached_activations_path)
        if cfg.hook_name not in cache.hooks:
            raise ValueError(
                f"the cache at {cache.path} holds {', '.join(cache.hooks)}, not {cfg.hook_name!r}; "
                "set hook_name to one of them"
            )
        cache.check_trainable(cfg.hook_name, allow_incomplete=cfg.allow_incomplete_cache)
        n_rows = cache.n_rows(cfg.hook_name)
        batch = cfg.train_batch_size_tokens
        if batch > n_rows:
            raise ValueError(
                f"train_batch_size_tokens={batch} is larger than the {n_rows} rows of the cache "
                f"at {cache.path}: every batch would hold the same rows several times; lower "
                "train_batch_size_tokens or extract more activations"
            )
        settings = cache.settings
        return ActivationSource(
            d_in=cache.d_in(cfg.hook_name),
            model_name=model_reference(settings["model"], strict=False),  # older caches: relative
            family=settings["family"],
            hook_name=cfg.hook_name,
            tokens=settings["tokens"],
            dataset=cfg.dataset_name or cache.manifest.get("dataset", str(cache.path)),
            make_batches=lambda seed: cache.batches(
                cfg.hook_name,
                cfg.train_batch_size_tokens,
                seed=seed,
                rank=parallel.rank,
                world_size=parallel.world_size,
                order=cfg.data_order,
            ),
        )
    from sae_vlm_plugin.images import open_image_source
    from sae_vlm_plugin.model import VisionModel
    from sae_vlm_plugin.tokens import TokenSelection
    from sae_vlm_plugin.training.image_stream import image_activation_batches

    if model is None:
        assert cfg.model_name is not None  # the config checks that images come with a model
        model = VisionModel(cfg.model_name, device=parallel.device_for(cfg.device))
    vision_model = model
    selection = TokenSelection.parse(cfg.tokens or "cls", k=cfg.tokens_per_image, seed=cfg.seed)
    point = vision_model.hook_point(cfg.hook_name)
    images = open_image_source(
        cfg.dataset_path,
        split=cfg.images_split,
        image_column=cfg.image_column,
        label_column=cfg.label_column,
    )
    return ActivationSource(
        d_in=point.d_model,
        model_name=vision_model.model_name,
        family=vision_model.family.name,
        hook_name=cfg.hook_name,
        tokens=selection.describe(),
        dataset=cfg.dataset_name or str(cfg.dataset_path),
        make_batches=lambda seed: image_activation_batches(
            vision_model,
            images,
            cfg.hook_name,
            selection,
            cfg.train_batch_size_tokens,
            batch_size_images=cfg.extraction_batch_size,
            buffer_batches=cfg.mixing_buffer_batches,
            seed=seed,
            parallel=parallel,
        ),
    )


def build_training_sae(cfg: VisionSAERunnerConfig, d_in: int) -> Any:
    """The training SAE of ``cfg.architecture`` at width ``cfg.sae_width(d_in)``."""
    from sae_lens import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )

    from sae_vlm_plugin.training import (
        PaperBatchTopKTrainingSAE,
        PaperBatchTopKTrainingSAEConfig,
        PaperMatryoshkaBatchTopKTrainingSAE,
        PaperMatryoshkaBatchTopKTrainingSAEConfig,
        group_sizes_from_fractions,
    )
    from sae_vlm_plugin.training.architectures.config import PAPER_GROUP_FRACTIONS

    d_sae = cfg.sae_width(d_in)
    common: dict[str, Any] = {"d_in": d_in, "d_sae": d_sae, "k": cfg.k, "device": cfg.device}
    paper: dict[str, Any] = {
        "auxk_alpha": cfg.aux_loss_coefficient,
        "dead_feature_threshold": cfg.dead_feature_inputs,
        "threshold_start_step": cfg.threshold_start_step,
        "reference_logging_every": cfg.reference_logging_every,
    }
    fractions = cfg.group_fractions or list(PAPER_GROUP_FRACTIONS)
    if cfg.architecture == "paper_batchtopk":
        return PaperBatchTopKTrainingSAE(PaperBatchTopKTrainingSAEConfig(**common, **paper))
    if cfg.architecture == "paper_matryoshka_batchtopk":
        return PaperMatryoshkaBatchTopKTrainingSAE(
            PaperMatryoshkaBatchTopKTrainingSAEConfig(**common, **paper, group_fractions=fractions)
        )
    builtin = {**common, "aux_loss_coefficient": cfg.aux_loss_coefficient}
    if cfg.architecture == "batchtopk":
        return BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**builtin))
    widths = list(itertools.accumulate(group_sizes_from_fractions(fractions, d_sae)))
    return MatryoshkaBatchTopKTrainingSAE(
        MatryoshkaBatchTopKTrainingSAEConfig(**builtin, matryoshka_widths=widths)
    )
