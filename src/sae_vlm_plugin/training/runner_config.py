"""``VisionSAERunnerConfig``: one dataclass for a vision SAE training run (SAELens style).

It mirrors SAELens' ``LanguageModelSAERunnerConfig``: where the activations come from (a model
+ hook + token selection + image folder, or an activation cache), the SAE architecture, and the
trainer settings. Defaults are the paper's (Matryoshka-BatchTopK, k = 20, batch 4096, 100k steps,
lr = 2e-4 / sqrt(d_sae / 2^14) with 1000 warm-up steps, auxk_alpha = 0.03).

It also speaks SAELens: ``sae=`` takes a SAELens training SAE config and ``logger=`` a
``LoggingConfig`` (both set the runner's fields and are not stored), and ``from_dict`` /
``from_file`` read SAELens' names in SAELens' units (``training/sae_lens_config.py``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from sae_vlm_plugin.devices import check_device_name

Architecture = Literal[
    "paper_matryoshka_batchtopk", "paper_batchtopk", "matryoshka_batchtopk", "batchtopk"
]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)


@dataclass
class VisionSAERunnerConfig:
    """A vision SAE training run. Exactly one of ``cache_path`` or (``model`` and ``images``)."""

    # -- activations ----------------------------------------------------------------------
    hook_name: str = "blocks.22.hook_resid_post"
    """Canonical hook the SAE reads (``sae_vlm_plugin.hooks``)."""
    tokens: str | None = None
    """Token selection: cls | patches | all | mean | random_k (or random_N). None: the
    cache's (training from images: cls); one that contradicts the cache's is refused."""
    tokens_per_image: int = 2
    """k of ``random_k`` (the paper's steering SAE: 2 random tokens per image)."""
    cache_path: str | None = None
    """Train from this activation cache (``sae-vlm extract``)."""
    allow_incomplete_cache: bool = False
    """Train on the shards of a cache whose extraction did not finish (else it is refused)."""
    model: str | None = None
    """Train from images: hub id / path / ``open_clip:...`` of the model to extract from."""
    images: str | None = None
    """Train from images: any form ``open_images`` reads with random access (a folder, tar
    shards, ``hf:NAME``, a saved dataset, parquet shards, a path list)."""
    images_split: str | None = None
    """Training from images: the split of ``images`` to read (``--split``)."""
    image_column: str | None = None
    """Training from images: the column (webdataset: member) holding the images."""
    label_column: str | None = None
    """Training from images: the column (webdataset: member or JSON field) of the labels."""
    dataset_name: str | None = None
    """Recorded in the SAE's metadata (default: the image folder or the cache's source)."""
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
    """Active latents per input (BatchTopK keeps k * batch_size entries of each batch)."""
    group_fractions: list[float] | None = None
    """Matryoshka group fractions (None: the paper's 1/16, 1/8, 1/4, 9/16)."""
    auxk_alpha: float = 0.03
    """Weight of the auxiliary dead-latent loss: 0.03, what every reference script passes
    (``--auxk_alpha 0.03``; dictionary_learning's own default is 1/32)."""
    dead_after_inputs: int = 10_000_000
    """A latent is dead for the auxiliary loss once this many inputs passed without it firing
    (dictionary_learning's ``dead_feature_threshold``). SAELens counts training steps instead
    (``dead_feature_window`` W: dead after more than W steps), which is
    ``dead_after_inputs = (W + 1) * batch_size``; its built-in architectures get that W."""
    threshold_start_step: int = 1000
    """Paper architectures: the inference threshold's EMA starts after this step."""
    reference_logging_every: int | None = None
    """Paper architectures, opt-in: replay the state changes of the reference's logging every
    N steps (its scripts log every 10000) to reproduce its checkpoints bit for bit (see
    ``PaperBatchTopKTrainingSAEConfig.reference_logging_every``); None: logging changes nothing."""

    # -- trainer --------------------------------------------------------------------------
    batch_size: int = 4096
    training_steps: int = 100_000
    lr: float | None = None
    """None: the paper's 2e-4 / sqrt(d_sae / 2^14)."""
    warmup_steps: int = 1000
    scale_inputs: bool = True
    """Divide activations by sqrt(mean ||x||^2) while training; folded into the saved SAE."""
    n_batches_for_scaling: int = 101
    """Batches the input scaling is estimated on: 101, as the reference's
    ``get_norm_factor(data, steps=100)`` reads batches 0..100 (it breaks on ``step > steps``)
    of a fresh shuffled pass over the training loader. Here: a pass of the training stream
    with its own seed (``seed + SCALING_SEED_OFFSET``), the same batches in distribution."""
    seed: int = 0
    device: str = "cpu"
    adaptive_threads: bool = False
    """On the CPU, run each step on fewer threads while other processes share the cores
    (``sae_vlm_plugin.threads``; on 2 shared cores a step then takes 1.8x its quiet time instead
    of 2.7x). Off by default: results depend on the thread count in their last bits, so a run
    would no longer repeat bit for bit on a machine whose load changes."""

    # -- run ------------------------------------------------------------------------------
    run_dir: str = "runs/vision-sae"
    """Checkpoints, ``log.jsonl`` and the exported SAE (``final/``) go here."""
    checkpoint_every_steps: int = 5000
    """0 disables intermediate checkpoints (the final SAE is always written)."""
    log_every_steps: int = 100
    eval_every_steps: int = 1000
    """How often the evaluator (e.g. MS on held-out images) runs, if there is one."""
    eval_images: str | None = None
    """Held-out image folder: MS of the latents on it is logged every ``eval_every_steps``."""
    scoring_encoder: str = "dinov2"
    """Encoder whose embeddings MS compares images with: ``dinov2``, ``clip`` or a hub id."""
    feature_sampling_window: int = 2000
    """Steps over which firing frequencies are gathered for the logged sparsity (SAELens')."""
    log_to_wandb: bool = False
    wandb_project: str = "sae_vlm_plugin"
    wandb_entity: str | None = None
    wandb_id: str | None = None
    """Resume this wandb run (wandb's ``id``; with ``resume="allow"``)."""
    run_name: str | None = None
    """The wandb run's name (None: wandb's)."""
    wandb_tags: list[str] = field(default_factory=list)
    wandb_dir: str | None = None
    """Where wandb writes its files; None: ``$WANDB_DIR`` if set, else ``run_dir``."""
    preset: str | None = None
    """Name of the preset this config came from (recorded in metadata)."""
    extra_metadata: dict[str, Any] = field(default_factory=dict)
    sae: InitVar[Any] = None
    """A SAELens training SAE config (``BatchTopKTrainingSAEConfig``, ...) or its dict with
    ``architecture``: sets ``architecture``, ``d_in``, ``d_sae``, ``k``, ``auxk_alpha`` and
    the Matryoshka groups (``sae_lens_config.sae_values``)."""
    logger: InitVar[Any] = None
    """A SAELens ``LoggingConfig`` or its dict: sets the wandb and logging fields."""

    def __post_init__(self, sae: Any, logger: Any) -> None:
        from sae_vlm_plugin.training.sae_lens_config import logger_values, sae_values

        if sae is not None:
            self._take(sae_values(sae, ARCHITECTURES))
        if logger is not None:
            self._take(logger_values(logger, _runner_defaults()))
        coerce_fields(self)
        check_device_name(self.device)
        from_cache = self.cache_path is not None
        from_images = self.model is not None or self.images is not None
        if from_cache == from_images:
            raise ValueError(
                "give either cache_path (train from an activation cache) or model and images "
                "(train from images, extracting on the fly), not both and not neither"
            )
        if from_images and (self.model is None or self.images is None):
            raise ValueError("training from images needs both model and images")
        if from_images and self.data_order == "reference":
            raise ValueError(
                "data_order='reference' replays a cache's rows as the reference's DataLoader "
                "did; it needs cache_path (sae-vlm extract first)"
            )
        positive = {
            "batch_size": self.batch_size,
            "training_steps": self.training_steps,
            "k": self.k,
            "expansion_factor": self.expansion_factor,
            "tokens_per_image": self.tokens_per_image,
            "extraction_batch_size": self.extraction_batch_size,
            "mixing_buffer_batches": self.mixing_buffer_batches,
            "log_every_steps": self.log_every_steps,
            "eval_every_steps": self.eval_every_steps,
            "n_batches_for_scaling": self.n_batches_for_scaling,
            "dead_after_inputs": self.dead_after_inputs,
            "feature_sampling_window": self.feature_sampling_window,
        }
        bad = {name: value for name, value in positive.items() if value < 1}
        if bad:
            raise ValueError(f"these settings must be >= 1: {bad}")
        if self.d_sae is not None and self.k > self.d_sae:
            raise ValueError(f"k={self.k} is larger than d_sae={self.d_sae}")
        if not 0 <= self.warmup_steps < self.training_steps:
            raise ValueError(
                f"warmup_steps must be in [0, training_steps={self.training_steps}), got {self.warmup_steps}"
            )
        if self.checkpoint_every_steps < 0:
            raise ValueError(
                f"checkpoint_every_steps must be >= 0, got {self.checkpoint_every_steps}"
            )
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    def _take(self, values: dict[str, Any]) -> None:
        """Set fields from a nested SAELens config; one set also on the runner to another
        value than its default is refused (one setting, one place)."""
        defaults = {f.name: _field_default(f) for f in dataclasses.fields(self)}
        for name, value in values.items():
            current = getattr(self, name)
            if current != defaults[name] and current != value:
                raise ValueError(
                    f"{name}={current!r} disagrees with the nested SAELens config's {value!r}: "
                    "set it in one place"
                )
            setattr(self, name, value)

    @property
    def dead_feature_window(self) -> int:
        """SAELens' equivalent of ``dead_after_inputs``: dead after more than this many steps
        without firing, ``ceil(dead_after_inputs / batch_size) - 1``."""
        return math.ceil(self.dead_after_inputs / self.batch_size) - 1

    def sae_width(self, d_in: int) -> int:
        width = self.d_sae if self.d_sae is not None else self.expansion_factor * d_in
        if self.k > width:
            raise ValueError(f"k={self.k} is larger than d_sae={width}")
        return width

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> VisionSAERunnerConfig:
        """A config from a dict of runner fields or SAELens' names (``sae_lens_config``);
        unknown keys raise, naming the valid ones."""
        from sae_vlm_plugin.training.sae_lens_config import runner_values

        values = runner_values(values, _runner_defaults())
        known = {f.name for f in dataclasses.fields(cls)} | {"sae", "logger"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown config keys {unknown}; valid keys: {', '.join(sorted(known))}"
            )
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path) -> VisionSAERunnerConfig:
        """A config from a YAML (``safe_load``) or JSON file."""
        return cls.from_dict(read_mapping(path, "config keys"))


def _runner_defaults() -> dict[str, Any]:
    return {f.name: _field_default(f) for f in dataclasses.fields(VisionSAERunnerConfig)}


def _field_default(item: dataclasses.Field[Any]) -> Any:
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return item.default


def coerce_fields(instance: Any) -> None:
    """Coerce every field of the dataclass ``instance`` to its annotation, in place.

    Values come from YAML (1.1 reads ``3e-4`` as a string), JSON and ``--set``, so a number
    may arrive as a string and a float as an int; anything that does not fit its annotation
    raises a ValueError naming the field, the value and the expected type."""
    hints = typing.get_type_hints(type(instance))
    for item in dataclasses.fields(instance):
        value = getattr(instance, item.name)
        setattr(instance, item.name, coerce_value(item.name, value, hints[item.name]))


def coerce_value(name: str, value: Any, annotation: Any) -> Any:
    """``value`` as an instance of ``annotation`` (str, int, float, bool, Literal, Optional /
    unions, ``list[X]``, ``tuple[X, ...]``, ``dict[K, V]``, Any); ``name`` is the field named
    in the error."""
    converted = _converted(value, annotation)
    if converted is _MISMATCH:
        raise ValueError(f"{name}: expected {_type_name(annotation)}, got {value!r}")
    return converted


_MISMATCH = object()


def _converted(value: Any, annotation: Any) -> Any:
    """``value`` converted to ``annotation``, or ``_MISMATCH``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is Any:
        return value
    if origin is Literal:
        return value if any(value == a and type(value) is type(a) for a in args) else _MISMATCH
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None if type(None) in args else _MISMATCH
        arms = (_converted(value, arm) for arm in args if arm is not type(None))
        return next((c for c in arms if c is not _MISMATCH), _MISMATCH)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            return _MISMATCH
        items = [_converted(item, args[0]) for item in value]
        return _MISMATCH if any(i is _MISMATCH for i in items) else origin(items)
    if origin is dict:
        if not isinstance(value, dict):
            return _MISMATCH
        pairs = [(_converted(k, args[0]), _converted(v, args[1])) for k, v in value.items()]
        return _MISMATCH if any(x is _MISMATCH for p in pairs for x in p) else dict(pairs)
    if annotation in _SCALARS:
        return _SCALARS[annotation](value)
    raise TypeError(f"no coercion to {annotation!r}; add it to coerce_value")


def _to_bool(value: Any) -> Any:
    """Only a bool: a string or 0/1 is more likely a mistake than a setting."""
    return value if isinstance(value, bool) else _MISMATCH


def _to_int(value: Any) -> Any:
    """An int, an integral float, or a string holding one (``'20'``, ``'2e4'``)."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            value = _to_float(value)
    if isinstance(value, bool):
        return _MISMATCH
    if isinstance(value, int):
        return value
    return int(value) if isinstance(value, float) and value.is_integer() else _MISMATCH


def _to_float(value: Any) -> Any:
    """A finite float from a float, an int or a numeric string (``'3e-4'``)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return _MISMATCH
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _MISMATCH
    return float(value) if math.isfinite(value) else _MISMATCH


def _to_str(value: Any) -> Any:
    """A string, or a path (``Path`` objects are common for directories)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value if isinstance(value, str) else _MISMATCH


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _type_name(annotation: Any) -> str:
    """How an error names the expected type: ``int``, ``float or None``, ``one of 'a', 'b'``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("None" if arm is type(None) else _type_name(arm) for arm in args)
    if annotation is Any:
        return "Any"
    if origin is not None:
        return f"{origin.__name__}[{', '.join(map(_type_name, args))}]"
    return str(annotation.__name__)


def read_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping a YAML (``.yaml``/``.yml``, plain data only) or JSON file holds; ``what``
    names its keys in the error raised for anything else. A key repeated in one mapping is
    refused (both parsers would silently keep the last value)."""
    from sae_vlm_plugin.pretrained.schema import load_yaml_text

    path = Path(path)
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        values = load_yaml_text(text, str(path))
    else:
        values = json.loads(text, object_pairs_hook=lambda pairs: _unique_keys(pairs, path))
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of {what}, got {type(values).__name__}")
    return values


def _unique_keys(pairs: list[tuple[str, Any]], path: Path) -> dict[str, Any]:
    """A JSON object's pairs as a dict, refusing a repeated key."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"{path}: duplicate key {key!r}")
        seen[key] = value
    return seen
