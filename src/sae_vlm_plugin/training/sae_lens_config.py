"""The parts of SAELens' training-config vocabulary that are not ``VisionSAERunnerConfig`` fields.

The runner's fields carry SAELens' own names and units (``train_batch_size_tokens``,
``training_tokens``, ``lr_warm_up_steps``, ``checkpoint_path``, ``logger.wandb_log_frequency``
...), so a SAELens ``LanguageModelSAERunnerConfig`` (as a dict or YAML) mostly reads as it is.
This module reads the rest of it:

- ``sae=``, a SAELens training SAE config (or its dict with ``architecture``): the architecture,
  widths, k, auxiliary-loss weight and Matryoshka widths become the runner's flat fields
  (``sae_settings``);
- ``logger=``, a SAELens ``LoggingConfig`` (or its dict), becomes the runner's ``logger``
  (``logger_settings``);
- a language model's own settings (``context_size``, ``prepend_bos``, ...) have no meaning for
  images and are kept in ``extra_metadata["sae_lens_lm_settings"]`` (``LM_ONLY``), visible in
  the saved config and the SAE's metadata;
- shared settings the runner cannot change (another learning-rate schedule, other Adam betas,
  ...) are refused unless at SAELens' default (``DEFAULT_ONLY``);
- ``use_cached_activations`` (a property of the runner: whether ``cached_activations_path`` is
  set), ``dead_feature_threshold`` (SAELens' firing density, 1e-8, which its trainer never
  reads) and ``lr_end`` (read by SAELens' cosine schedules only) are accepted and stored nowhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

LM_ONLY: frozenset[str] = frozenset(
    {
        "model_class_name", "hook_eval", "dataset_trust_remote_code", "streaming",
        "is_dataset_tokenized", "use_chat_formatting", "context_size", "n_batches_in_buffer",
        "store_batch_size_prompts", "seqpos_slice", "disable_concat_sequences",
        "sequence_separator_token", "activations_mixing_fraction", "llm_device",
        "act_store_device", "prefetch_llm_batches", "prepend_bos", "autocast_lm", "compile_llm",
        "llm_compilation_mode", "compile_sae", "sae_compilation_mode", "n_eval_batches",
        "eval_batch_size_prompts", "verbose", "model_kwargs", "model_from_pretrained_kwargs",
        "sae_lens_version", "sae_lens_training_version", "exclude_special_tokens",
    }
)  # fmt: skip
"""Settings of a language model's activation store, tokenizer and compilation: no meaning for
images; kept in ``extra_metadata["sae_lens_lm_settings"]``."""

DEFAULT_ONLY: dict[str, Any] = {
    "hook_head_index": None,
    "lr_scheduler_name": "constant",
    "lr_decay_steps": 0,
    "n_restart_cycles": 1,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "autocast": False,
    "dtype": "float32",
    "from_pretrained_path": None,
    "resume_from_checkpoint": None,
    "save_final_checkpoint": False,
    "output_path": "output",
}
"""Shared settings the runner cannot change, with the value it trains with (SAELens' default):
the runner's schedule is constant after warm-up, Adam keeps its betas, it trains in float32,
resumes by re-running the same command and writes the final SAE to ``checkpoint_path/final``."""

LOGGER_DEFAULT_ONLY: dict[str, Any] = {
    "log_activations_store_to_wandb": False,
    "log_optimizer_state_to_wandb": False,
    "log_weights_to_wandb": True,
}
"""``LoggingConfig`` settings of SAELens' artifact uploads, which the runner does not make."""

SAE_FIELDS: dict[str, str] = {
    "d_in": "d_in",
    "d_sae": "d_sae",
    "k": "k",
    "aux_loss_coefficient": "aux_loss_coefficient",
    "auxk_alpha": "aux_loss_coefficient",
    "threshold_start_step": "threshold_start_step",
    "reference_logging_every": "reference_logging_every",
    "group_fractions": "group_fractions",
    "dead_feature_threshold": "dead_after_inputs",
}
"""SAELens training SAE config field -> runner field (the paper configs' ``auxk_alpha`` and
``dead_feature_threshold``, dictionary_learning's names, are its aux-loss weight and its count
of inputs without firing)."""

SAE_IGNORED: frozenset[str] = frozenset({"device", "metadata", "dtype"})
"""SAE config fields the runner sets itself (device, dtype) or records itself (metadata)."""

Setting = tuple[str, Any, bool]
"""``(name, value, at_default)`` read from a nested config: ``at_default`` marks a value its
class only defaults to, which a setting given elsewhere replaces."""


def read_sae_lens_only(values: dict[str, Any], cache_key: str) -> dict[str, Any]:
    """Take SAELens' settings that are no runner field out of ``values`` (in place): refuse a
    ``DEFAULT_ONLY`` setting off its default and a density that is not one, drop
    ``cached_activations_path`` (``cache_key``) where ``use_cached_activations`` is False, and
    return the language model's settings (``LM_ONLY``)."""
    lm = {name: values.pop(name) for name in sorted(LM_ONLY & set(values))}
    for name, default in DEFAULT_ONLY.items():
        if name in values and values.pop(name) != default:
            raise ValueError(_default_only(name, default))
    values.pop("lr_end", None)
    density = values.pop("dead_feature_threshold", None)
    if density is not None and not 0 <= float(density) < 1:
        raise ValueError(
            f"dead_feature_threshold={density!r}: in SAELens it is a firing density (1e-8); "
            "a latent counts as dead after dead_feature_window steps (or dead_after_inputs "
            "inputs) without firing"
        )
    use_cache = values.pop("use_cached_activations", None)
    if use_cache is False:
        values.pop(cache_key, None)  # SAELens reads it only with use_cached_activations
    elif use_cache and values.get(cache_key) is None:
        raise ValueError("use_cached_activations=True needs cached_activations_path")
    return lm


def logger_settings(logger: Any, plugin_fields: Mapping[str, Any]) -> list[Setting]:
    """The runner's ``logger`` settings from a SAELens ``LoggingConfig``, the runner's own
    logging config, or a dict of either's fields. ``plugin_fields``: the runner's logger fields
    and their defaults; an object's field at its class' default is marked so."""
    given = _as_dict(logger, "logger")
    valid = {*plugin_fields, *LOGGER_DEFAULT_ONLY}
    unknown = sorted(set(given) - valid)
    if unknown:
        raise ValueError(f"unknown logger settings {unknown}; valid: {', '.join(sorted(valid))}")
    for name, default in LOGGER_DEFAULT_ONLY.items():
        if name in given and given.pop(name) != default:
            raise ValueError(_default_only(f"logger.{name}", default))
    defaults = {} if isinstance(logger, dict) else _defaults(logger)
    return [(k, v, k in defaults and v == defaults[k]) for k, v in given.items()]


def sae_settings(sae: Any, architectures: Sequence[str]) -> list[Setting]:
    """Runner fields from a SAELens training SAE config (or its dict with ``architecture``, one
    of the runner's ``architectures``): the architecture, widths, k, auxiliary-loss weight and
    Matryoshka groups; a value at the config class' default is marked so. A setting the runner
    has no field for must be at its class's default."""
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    from sae_vlm_plugin.training.architectures.registration import register_training_architectures

    if isinstance(sae, dict):
        fields = {k: v for k, v in sae.items() if k not in SAE_IGNORED}
        architecture = fields.pop("architecture", None)
        _check_architecture(architecture, architectures)
        register_training_architectures()
        config_class = SAE_TRAINING_CLASS_REGISTRY[architecture][1]
        valid = {f.name for f in dataclasses.fields(config_class)}
        unknown = sorted(set(fields) - valid)
        if unknown:
            raise ValueError(
                f"sae: unknown {architecture} settings {unknown}; valid: {', '.join(sorted(valid))}"
            )
        sae = config_class(**fields)
    architecture = type(sae).architecture()
    _check_architecture(architecture, architectures)
    given = _as_dict(sae, "sae")
    defaults = _defaults(sae)
    out: list[Setting] = [("architecture", architecture, False)]
    for name, value in given.items():
        at_default = name in defaults and value == defaults[name]
        if name in SAE_FIELDS:
            out.append((SAE_FIELDS[name], value, at_default))
        elif name == "matryoshka_widths":
            out.append(("group_fractions", _fractions(value, int(given["d_sae"])), False))
        elif name == "normalize_activations" and value == "expected_average_only_in":
            out.append(("scale_inputs", True, False))
        elif name not in SAE_IGNORED and name in defaults and not at_default:
            raise ValueError(_default_only(f"sae.{name}", defaults[name]))
    for i, (name, value, at_default) in enumerate(out):
        if name == "k" and isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"sae.k={value}: the runner keeps a whole number of latents")
            out[i] = (name, int(value), at_default)
    return out


def _check_architecture(architecture: Any, architectures: Sequence[str]) -> None:
    if architecture not in architectures:
        raise ValueError(
            f"sae: architecture {architecture!r} does not train here; "
            f"valid architectures: {', '.join(architectures)}"
        )


def _fractions(widths: list[int], d_sae: int) -> list[float]:
    """Matryoshka cumulative widths (SAELens) as group fractions of ``d_sae`` (the runner)."""
    if not widths or widths[-1] != d_sae or sorted(set(widths)) != list(widths):
        raise ValueError(
            f"sae.matryoshka_widths={widths}: give increasing widths ending at d_sae={d_sae}"
        )
    sizes = [b - a for a, b in zip([0, *widths[:-1]], widths, strict=True)]
    return [size / d_sae for size in sizes]


def _as_dict(config: Any, what: str) -> dict[str, Any]:
    if isinstance(config, dict):
        return dict(config)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    raise TypeError(f"{what}: expected a SAELens config or a dict, got {type(config).__name__}")


def _defaults(config: Any) -> dict[str, Any]:
    """The defaults of a dataclass instance's fields (those that have one)."""
    out = {}
    for item in dataclasses.fields(config):
        if item.default is not dataclasses.MISSING:
            out[item.name] = item.default
        elif item.default_factory is not dataclasses.MISSING:
            out[item.name] = item.default_factory()
    return out


def _default_only(name: str, default: Any) -> str:
    return (
        f"{name} cannot be changed for the vision runner (it trains with {default!r}, "
        f"SAELens' default): leave it at {default!r}"
    )
