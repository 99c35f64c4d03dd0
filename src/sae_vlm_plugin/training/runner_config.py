"""``VisionSAERunnerConfig``: one dataclass for a vision SAE training run, in SAELens' words.

It mirrors SAELens' ``LanguageModelSAERunnerConfig``: where the activations come from (a model
+ hook + token selection + image source, or an activation cache), the SAE architecture, and the
trainer settings. Defaults are the paper's (Matryoshka-BatchTopK, k = 20, batch 4096, 100k steps,
lr = 2e-4 / sqrt(d_sae / 2^14) with 1000 warm-up steps, aux-loss weight 0.03).

Every concept SAELens shares has SAELens' name and unit (``model_name``, ``dataset_path``,
``cached_activations_path``, ``train_batch_size_tokens``, ``training_tokens``,
``lr_warm_up_steps``, ``dead_feature_window``, ``n_checkpoints``, ``checkpoint_path``,
``n_batches_for_norm_estimate``, ``logger.wandb_log_frequency`` ...), in the fields and in
every saved config. The plugin's earlier names are still read, converted exactly
(``config_names``); SAELens' nested ``sae=`` and its settings that are no field are read too
(``sae_lens_config``). Where the plugin's unit cannot be written in SAELens' one, the plugin's
setting is a field of its own beside SAELens' (``dead_after_inputs``, ``checkpoint_every_steps``,
``eval_every_steps``). Concepts SAELens lacks keep the plugin's names.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from sae_vlm_plugin.devices import check_device_name
from sae_vlm_plugin.training.config_values import coerce_fields, read_mapping

Architecture = Literal[
    "paper_matryoshka_batchtopk", "paper_batchtopk", "matryoshka_batchtopk", "batchtopk"
]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)

__all__ = [
    "ARCHITECTURES",
    "VisionLoggingConfig",
    "VisionSAERunnerConfig",
    "flat_config",
    "read_mapping",
]


@dataclass
class VisionLoggingConfig:
    """SAELens' ``LoggingConfig`` as the runner reads it: its names and units, the runner's
    defaults (no wandb; log every 100 steps; evaluate every 10th log, i.e. every 1000 steps),
    plus wandb's run tags and directory, which SAELens' lacks. Every logged step also goes to
    ``checkpoint_path/log.jsonl``, with or without wandb."""

    log_to_wandb: bool = False
    wandb_project: str = "sae_vlm_plugin"
    wandb_id: str | None = None
    """Resume this wandb run (wandb's ``id``; with ``resume="allow"``)."""
    run_name: str | None = None
    """The wandb run's name (None: wandb's)."""
    wandb_entity: str | None = None
    wandb_log_frequency: int = 100
    """Log the training metrics every this many steps (the plugin's earlier
    ``log_every_steps``)."""
    eval_every_n_wandb_logs: int = 10
    """Run the evaluator (e.g. MS on held-out images) every this many logs, i.e. every
    ``eval_every_n_wandb_logs * wandb_log_frequency`` steps (and at the last step), unless the
    runner's ``eval_every_steps`` is set."""
    wandb_tags: list[str] = field(default_factory=list)
    """The wandb run's tags (the runner's addition)."""
    wandb_dir: str | None = None
    """Where wandb writes its files (the runner's addition); None: ``$WANDB_DIR`` if set, else
    ``checkpoint_path``."""


@dataclass
class VisionSAERunnerConfig:
    """A vision SAE training run. Exactly one of ``cached_activations_path`` or
    (``model_name`` and ``dataset_path``).

    Takes its fields as keyword arguments, and also: the plugin's earlier names
    (``config_names.PLUGIN_NAMES``: ``cache_path``, ``batch_size``, ``training_steps`` ...,
    converted into the fields), SAELens' ``sae=`` (a training SAE config or its dict: sets
    ``architecture``, ``d_in``, ``d_sae``, ``k``, ``aux_loss_coefficient`` and the Matryoshka
    groups), ``logger=`` as a SAELens ``LoggingConfig`` or a dict, and SAELens' settings that
    are no field (``sae_lens_config``). One setting given in two spellings is refused."""

    # -- activations ----------------------------------------------------------------------
    hook_name: str = "blocks.22.hook_resid_post"
    """Canonical hook the SAE reads (``sae_vlm_plugin.hooks``)."""
    tokens: str | None = None
    """Token selection: cls | patches | all | mean | random_k (or random_N). None: the
    cache's (training from images: cls); one that contradicts the cache's is refused."""
    tokens_per_image: int = 2
    """k of ``random_k`` (the paper's steering SAE: 2 random tokens per image)."""
    cached_activations_path: str | None = None
    """Train from this activation cache (``sae-vlm extract``); earlier ``cache_path``."""
    allow_incomplete_cache: bool = False
    """Train on the shards of a cache whose extraction did not finish (else it is refused)."""
    model_name: str | None = None
    """Train from images: hub id / path / ``open_clip:...`` of the model to extract from;
    earlier ``model``."""
    dataset_path: str | None = None
    """Train from images: any form ``open_images`` reads with random access (a folder, tar
    shards, ``hf:NAME``, a saved dataset, parquet shards, a path list); earlier ``images``."""
    images_split: str | None = None
    """Training from images: the split of ``dataset_path`` to read (``--split``)."""
    image_column: str | None = None
    """Training from images: the column (webdataset: member) holding the images."""
    label_column: str | None = None
    """Training from images: the column (webdataset: member or JSON field) of the labels."""
    dataset_name: str | None = None
    """Recorded in the SAE's metadata (default: the image source or the cache's source)."""
    extraction_batch_size: int = 64
    """Images per forward pass when training from images."""
    mixing_buffer_batches: int = 16
    """Training from images: batches of rows held and shuffled together before training on them."""
    data_order: Literal["buffered", "reference"] = "buffered"
    """Training from a cache: ``buffered`` shuffles shards and rows through a buffer, anew each
    epoch; ``reference`` replays the paper's order (one permutation of all rows, in memory,
    short last batch kept, the first epoch repeated: ``ActivationCache.batches``), one process."""

    # -- SAE ------------------------------------------------------------------------------
    d_in: int | None = None
    """Expected activation width, checked against the source (None: the source's width)."""
    architecture: Architecture = "paper_matryoshka_batchtopk"
    """``paper_*``: the paper's recipe (dictionary_learning); the others: SAELens' built-ins."""
    expansion_factor: int = 16
    """d_sae = expansion_factor * d_in (ignored if ``d_sae`` is set)."""
    d_sae: int | None = None
    k: int = 20
    """Active latents per input (BatchTopK keeps k * batch entries of each batch)."""
    group_fractions: list[float] | None = None
    """Matryoshka group fractions (None: the paper's 1/16, 1/8, 1/4, 9/16)."""
    aux_loss_coefficient: float = 0.03
    """Weight of the auxiliary dead-latent loss (SAELens' name; the paper's ``auxk_alpha``,
    the plugin's earlier name): 0.03, what every reference script passes (``--auxk_alpha
    0.03``; dictionary_learning's own default is 1/32)."""
    dead_feature_window: int | None = None
    """SAELens' dead-latent window: a latent is dead for the auxiliary loss after more than
    this many training steps without firing. None: ``dead_after_inputs`` decides."""
    dead_after_inputs: int | None = 10_000_000
    """The paper's dead-latent rule, kept as a field of its own because inputs are not a whole
    number of steps (10M is not a multiple of 4096): dead once this many inputs passed
    without the latent firing (dictionary_learning's ``dead_feature_threshold``). A
    ``dead_feature_window`` W stands for ``(W + 1) * train_batch_size_tokens`` inputs; this
    stands for SAELens' ``ceil(dead_after_inputs / train_batch_size_tokens) - 1`` steps. Set
    one of the two (giving ``dead_feature_window`` unsets this)."""
    threshold_start_step: int = 1000
    """Paper architectures: the inference threshold's EMA starts after this step."""
    reference_logging_every: int | None = None
    """Paper architectures, opt-in: replay the state changes of the reference's logging every
    N steps (its scripts log every 10000) to reproduce its checkpoints bit for bit (see
    ``PaperBatchTopKTrainingSAEConfig.reference_logging_every``); None: logging changes nothing."""

    # -- trainer --------------------------------------------------------------------------
    train_batch_size_tokens: int = 4096
    """Rows (image tokens) per training step; earlier ``batch_size``."""
    training_tokens: int = 100_000 * 4096
    """Rows to train on: ``total_training_steps = training_tokens // train_batch_size_tokens``
    steps (SAELens' units). When neither it nor the earlier ``training_steps`` (converted as
    ``training_steps * train_batch_size_tokens``) is given: 100k steps at the batch size given."""
    lr: float | None = None
    """None: the paper's 2e-4 / sqrt(d_sae / 2^14)."""
    lr_warm_up_steps: int = 1000
    """Linear learning-rate warm-up, in steps; earlier ``warmup_steps``."""
    scale_inputs: bool = True
    """Divide activations by sqrt(mean ||x||^2) while training; folded into the saved SAE."""
    n_batches_for_norm_estimate: int = 101
    """Batches the input scaling is estimated on (earlier ``n_batches_for_scaling``): 101, as
    the reference's ``get_norm_factor(data, steps=100)`` reads batches 0..100 (it breaks on
    ``step > steps``) of a fresh shuffled pass over the training loader. Here: a pass of the
    training stream with its own seed (``seed + SCALING_SEED_OFFSET``)."""
    seed: int = 0
    device: str = "cpu"
    adaptive_threads: bool = False
    """On the CPU, run each step on fewer threads while other processes share the cores
    (``sae_vlm_plugin.threads``; on 2 shared cores a step then takes 1.8x its quiet time instead
    of 2.7x). Off by default: results depend on the thread count in their last bits, so a run
    would no longer repeat bit for bit on a machine whose load changes."""

    # -- run ------------------------------------------------------------------------------
    checkpoint_path: str = "runs/vision-sae"
    """The run's directory (earlier ``run_dir``): ``config.json``, ``log.jsonl``, checkpoints
    and the exported SAE (``final/``). Unlike SAELens, no unique id is appended: re-running
    the same command finds the run there and resumes it."""
    n_checkpoints: int = 0
    """SAELens' evenly spaced checkpoints: one at the first step past each multiple of
    ``ceil(training_tokens / (n_checkpoints + 1))`` trained rows, as SAELens' trainer does
    (0: none)."""
    checkpoint_every_steps: int = 5000
    """The plugin's periodic checkpoints, a field of its own (N evenly spaced checkpoints are no
    period in steps): one every this many steps, on top of those of ``n_checkpoints``; 0: none.
    The final SAE is always written; a run resumes from its latest checkpoint."""
    eval_every_steps: int | None = None
    """Run the evaluator every this many steps instead of every
    ``logger.eval_every_n_wandb_logs`` logs: the plugin's unit, kept only where it is no whole
    number of logs (a whole number is converted into ``eval_every_n_wandb_logs``)."""
    eval_images: str | None = None
    """Held-out image folder: MS of the latents on it is logged at every evaluation."""
    scoring_encoder: str = "dinov2"
    """Encoder whose embeddings MS compares images with: ``dinov2``, ``clip`` or a hub id."""
    feature_sampling_window: int = 2000
    """Steps over which firing frequencies are gathered for the logged sparsity (SAELens')."""
    logger: VisionLoggingConfig = field(default_factory=VisionLoggingConfig)
    """wandb and logging cadence (SAELens' ``LoggingConfig`` fields plus ``wandb_tags`` and
    ``wandb_dir``); the earlier top-level ``log_to_wandb``, ``wandb_project``, ``run_name``,
    ``log_every_steps`` ... are read into it."""
    preset: str | None = None
    """Name of the preset this config came from (recorded in metadata)."""
    extra_metadata: dict[str, Any] = field(default_factory=dict)

    def __init__(self, **values: Any) -> None:
        from sae_vlm_plugin.training.config_names import field_values

        defaults = _runner_defaults()
        values = field_values(flat_config(values), defaults)
        unknown = sorted(set(values) - set(defaults))
        if unknown:
            from sae_vlm_plugin.training.config_names import alias_names

            raise ValueError(
                f"unknown config keys {unknown}; valid keys: {', '.join(sorted(defaults))} "
                f"(and the earlier names {', '.join(alias_names())}, the nested sae and "
                "SAELens' own settings)"
            )
        logger = values.pop("logger")
        for name, default in defaults.items():
            setattr(self, name, values.get(name, default))
        self.logger = VisionLoggingConfig(**logger)
        self._check()

    def _check(self) -> None:
        coerce_fields(self)
        check_device_name(self.device)
        from_cache = self.cached_activations_path is not None
        from_images = self.model_name is not None or self.dataset_path is not None
        if from_cache == from_images:
            raise ValueError(
                "give either cached_activations_path (train from an activation cache) or "
                "model_name and dataset_path (train from images, extracting on the fly), not "
                "both and not neither"
            )
        if from_images and (self.model_name is None or self.dataset_path is None):
            raise ValueError("training from images needs both model_name and dataset_path")
        if from_images and self.data_order == "reference":
            raise ValueError(
                "data_order='reference' replays a cache's rows as the reference's DataLoader "
                "did; it needs cached_activations_path (sae-vlm extract first)"
            )
        positive = {
            "train_batch_size_tokens": self.train_batch_size_tokens,
            "k": self.k,
            "expansion_factor": self.expansion_factor,
            "tokens_per_image": self.tokens_per_image,
            "extraction_batch_size": self.extraction_batch_size,
            "mixing_buffer_batches": self.mixing_buffer_batches,
            "logger.wandb_log_frequency": self.logger.wandb_log_frequency,
            "logger.eval_every_n_wandb_logs": self.logger.eval_every_n_wandb_logs,
            "n_batches_for_norm_estimate": self.n_batches_for_norm_estimate,
            "feature_sampling_window": self.feature_sampling_window,
            "eval_every_steps": 1 if self.eval_every_steps is None else self.eval_every_steps,
            "dead_after_inputs": 1 if self.dead_after_inputs is None else self.dead_after_inputs,
        }
        bad = {name: value for name, value in positive.items() if value < 1}
        if bad:
            raise ValueError(f"these settings must be >= 1: {bad}")
        if self.training_tokens < self.train_batch_size_tokens:
            raise ValueError(
                f"training_tokens={self.training_tokens} is less than one batch "
                f"(train_batch_size_tokens={self.train_batch_size_tokens}): no step to train"
            )
        if self.d_sae is not None and self.k > self.d_sae:
            raise ValueError(f"k={self.k} is larger than d_sae={self.d_sae}")
        steps = self.total_training_steps
        if not 0 <= self.lr_warm_up_steps < steps:
            raise ValueError(
                f"lr_warm_up_steps must be in [0, total_training_steps={steps}), "
                f"got {self.lr_warm_up_steps}"
            )
        at_least_0 = {
            "checkpoint_every_steps": self.checkpoint_every_steps,
            "n_checkpoints": self.n_checkpoints,
            "dead_feature_window": self.dead_feature_window or 0,
        }
        for name, value in at_least_0.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    # -- SAELens' derived settings, and the plugin's units ----------------------------------

    @property
    def total_training_steps(self) -> int:
        """SAELens' ``total_training_steps``: ``training_tokens // train_batch_size_tokens``."""
        return self.training_tokens // self.train_batch_size_tokens

    @property
    def use_cached_activations(self) -> bool:
        """SAELens' flag: whether the run trains from ``cached_activations_path``."""
        return self.cached_activations_path is not None

    @property
    def dead_feature_steps(self) -> int:
        """The dead-latent window in SAELens' unit (what its trainer and built-ins get):
        ``dead_feature_window``, or ``ceil(dead_after_inputs / batch) - 1`` (the same latents)."""
        if self.dead_feature_window is not None:
            return self.dead_feature_window
        assert self.dead_after_inputs is not None
        return math.ceil(self.dead_after_inputs / self.train_batch_size_tokens) - 1

    @property
    def dead_feature_inputs(self) -> int:
        """The dead-latent rule in the paper's unit (what its SAEs get): ``dead_after_inputs``,
        or ``(dead_feature_window + 1) * train_batch_size_tokens``."""
        if self.dead_after_inputs is not None:
            return self.dead_after_inputs
        return (self.dead_feature_steps + 1) * self.train_batch_size_tokens

    @property
    def eval_period(self) -> int:
        """Steps between evaluations: ``eval_every_steps``, or ``eval_every_n_wandb_logs *
        wandb_log_frequency``."""
        if self.eval_every_steps is not None:
            return self.eval_every_steps
        return self.logger.eval_every_n_wandb_logs * self.logger.wandb_log_frequency

    def checkpoint_steps(self) -> set[int]:
        """The steps (counted after the step) that end with a checkpoint: every
        ``checkpoint_every_steps``, and SAELens' ``n_checkpoints`` (its trainer saves one at
        the first step past each threshold, at most one a step); never the last step, whose
        SAE is exported."""
        steps, batch = self.total_training_steps, self.train_batch_size_tokens
        out = set(range(self.checkpoint_every_steps, steps, self.checkpoint_every_steps or steps))
        if self.n_checkpoints > 0:
            every = math.ceil(self.training_tokens / (self.n_checkpoints + 1))
            last = 0
            for threshold in range(every, self.training_tokens, every):
                last = max(threshold // batch + 1, last + 1)
                out.add(last)
        return {step for step in out if 0 < step < steps}

    def sae_width(self, d_in: int) -> int:
        width = self.d_sae if self.d_sae is not None else self.expansion_factor * d_in
        if self.k > width:
            raise ValueError(f"k={self.k} is larger than d_sae={width}")
        return width

    # -- saving and reading -----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data in its one spelling (SAELens' names, ``logger`` nested):
        what ``config.json`` of a run holds and ``from_dict`` reads back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> VisionSAERunnerConfig:
        """A config from a dict in any spelling the constructor takes (a saved config of an
        earlier version, a SAELens config's dict); unknown keys raise, naming the valid ones."""
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path) -> VisionSAERunnerConfig:
        """A config from a YAML (``safe_load``) or JSON file."""
        return cls.from_dict(read_mapping(path, "config keys"))


def flat_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values``, in any spelling ``VisionSAERunnerConfig`` takes, in ``config_names``' flat
    form: what ``config_names.merge_settings`` lays over each other."""
    from sae_vlm_plugin.training.config_names import flat_settings

    return flat_settings(values, dataclasses.asdict(VisionLoggingConfig()), ARCHITECTURES)


def _runner_defaults() -> dict[str, Any]:
    return {f.name: _field_default(f) for f in dataclasses.fields(VisionSAERunnerConfig)}


def _field_default(item: dataclasses.Field[Any]) -> Any:
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return item.default
