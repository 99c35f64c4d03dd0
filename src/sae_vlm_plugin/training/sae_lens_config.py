"""SAELens' training-config vocabulary, read into ``VisionSAERunnerConfig`` fields.

A SAELens user's ``LanguageModelSAERunnerConfig`` (as a dict or YAML) runs with only the
vision keys changed: its names are aliases of the runner's fields, converted into the runner's
units, and its nested parts are read too - ``sae=`` a SAELens training SAE config (or its dict
with ``architecture``), ``logger=`` a ``LoggingConfig`` (or its dict). The runner's own names stay
the one spelling of a saved config.

Units (B = ``batch_size`` = SAELens' ``train_batch_size_tokens``, one row per image token):

- ``training_tokens`` -> ``training_steps = training_tokens // B`` (SAELens'
  ``total_training_steps``);
- ``dead_feature_window`` (W, training steps without firing; dead when ``n > W``) ->
  ``dead_after_inputs = (W + 1) * B`` (dead when ``n * B >= (W + 1) * B``: the same latents);
- ``n_checkpoints`` (N evenly spaced) -> ``checkpoint_every_steps = ceil(steps / (N + 1))``;
- ``logger.wandb_log_frequency`` -> ``log_every_steps``, ``eval_every_n_wandb_logs`` (E) ->
  ``eval_every_steps = E * log_every_steps``.

SAELens' ``dead_feature_threshold`` is a firing density (1e-8) that its trainer never reads, and
``lr_end`` only shapes its cosine schedules; both are accepted and have no effect here either. Settings that only make sense for a language model
(``context_size``, ``prepend_bos``, ...) are kept in ``extra_metadata["sae_lens_lm_settings"]``,
visible in the saved config and the SAE's metadata. Shared settings the runner cannot honour
(another learning-rate schedule, other Adam betas, ...) are refused unless at SAELens' default.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

RENAMED: dict[str, str] = {
    "model_name": "model",
    "dataset_path": "images",
    "cached_activations_path": "cache_path",
    "train_batch_size_tokens": "batch_size",
    "lr_warm_up_steps": "warmup_steps",
    "checkpoint_path": "run_dir",
}
"""SAELens name -> runner field, same unit."""

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
        "n_batches_for_norm_estimate",
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
resumes by re-running the same command and writes the final SAE to ``run_dir/final``."""

LOGGER_FIELDS: dict[str, str] = {
    "log_to_wandb": "log_to_wandb",
    "wandb_project": "wandb_project",
    "wandb_entity": "wandb_entity",
    "wandb_id": "wandb_id",
    "run_name": "run_name",
}
"""``LoggingConfig`` field -> runner field."""

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
    "aux_loss_coefficient": "auxk_alpha",
    "auxk_alpha": "auxk_alpha",
    "threshold_start_step": "threshold_start_step",
    "reference_logging_every": "reference_logging_every",
    "group_fractions": "group_fractions",
}
"""SAELens training SAE config field -> runner field."""

SAE_IGNORED: frozenset[str] = frozenset({"device", "metadata", "dtype"})
"""SAE config fields the runner sets itself (device, dtype) or records itself (metadata)."""


def runner_values(values: dict[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` (runner fields and SAELens names, ``sae`` / ``logger`` nested or not) as runner
    fields only, reading unset runner fields from ``defaults``; a concept given under both
    spellings is refused."""
    values = dict(values)
    out: dict[str, Any] = {}

    def put(field: str, value: Any, source: str) -> None:
        if field in out or field in values:
            raise ValueError(f"{source} and {field} name the same setting: give one of them")
        out[field] = value

    for name, field in RENAMED.items():
        if name in values:
            put(field, values.pop(name), name)
    use_cache = values.pop("use_cached_activations", None)
    if use_cache is False:
        out.pop("cache_path", None)  # SAELens reads it only with use_cached_activations
    elif use_cache and out.get("cache_path", values.get("cache_path")) is None:
        raise ValueError("use_cached_activations=True needs cached_activations_path")
    lm = {name: values.pop(name) for name in sorted(LM_ONLY & set(values))}
    if lm:
        extra = dict(values.pop("extra_metadata", None) or {})
        extra["sae_lens_lm_settings"] = lm
        out["extra_metadata"] = extra
    for name, default in DEFAULT_ONLY.items():
        if name in values and values.pop(name) != default:
            raise ValueError(_default_only(name, default))
    values.pop("lr_end", None)  # read by SAELens' cosine schedules only
    density = values.pop("dead_feature_threshold", None)
    if density is not None and not 0 <= float(density) < 1:
        raise ValueError(
            f"dead_feature_threshold={density!r}: in SAELens it is a firing density (1e-8); "
            "inputs without firing before a latent counts as dead is dead_after_inputs"
        )
    batch = int(values.get("batch_size", out.get("batch_size", defaults["batch_size"])))
    if "training_tokens" in values:
        put("training_steps", int(values.pop("training_tokens")) // batch, "training_tokens")
    if "dead_feature_window" in values:
        window = int(values.pop("dead_feature_window"))
        put("dead_after_inputs", (window + 1) * batch, "dead_feature_window")
    if "n_checkpoints" in values:
        n = int(values.pop("n_checkpoints"))
        steps = int(values.get("training_steps", out.get("training_steps", 0)))
        every = math.ceil(steps / (n + 1)) if n > 0 else 0
        put("checkpoint_every_steps", every, "n_checkpoints")
    return {**values, **out}


def logger_values(logger: Any, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Runner fields from a SAELens ``LoggingConfig`` (or its dict); ``defaults``: the runner's."""
    given = _as_dict(logger, "logger")
    valid = {*LOGGER_FIELDS, *LOGGER_DEFAULT_ONLY, "wandb_log_frequency", "eval_every_n_wandb_logs"}
    unknown = sorted(set(given) - valid)
    if unknown:
        raise ValueError(f"unknown logger settings {unknown}; valid: {', '.join(sorted(valid))}")
    for name, default in LOGGER_DEFAULT_ONLY.items():
        if name in given and given[name] != default:
            raise ValueError(_default_only(f"logger.{name}", default))
    out = {LOGGER_FIELDS[k]: v for k, v in given.items() if k in LOGGER_FIELDS}
    log_every = int(given.get("wandb_log_frequency", defaults["log_every_steps"]))
    out["log_every_steps"] = log_every
    if "eval_every_n_wandb_logs" in given:
        out["eval_every_steps"] = int(given["eval_every_n_wandb_logs"]) * log_every
    return out


def sae_values(sae: Any, architectures: Sequence[str]) -> dict[str, Any]:
    """Runner fields from a SAELens training SAE config (or its dict with ``architecture``, one
    of the runner's ``architectures``): the architecture, widths, k, auxiliary-loss weight and
    Matryoshka groups. A setting the runner has no field for must be at its class's default."""
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    from sae_vlm_plugin.training.architectures.registration import register_training_architectures

    if isinstance(sae, dict):
        fields = {k: v for k, v in sae.items() if k not in SAE_IGNORED}
        architecture = fields.pop("architecture", None)
        if architecture not in architectures:
            raise ValueError(
                f"sae: architecture {architecture!r} does not train here; "
                f"valid architectures: {', '.join(architectures)}"
            )
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
    if architecture not in architectures:
        raise ValueError(
            f"sae: architecture {architecture!r} does not train here; "
            f"valid architectures: {', '.join(architectures)}"
        )
    given = _as_dict(sae, "sae")
    defaults = {
        f.name: f.default for f in dataclasses.fields(sae) if f.default is not dataclasses.MISSING
    }
    out: dict[str, Any] = {"architecture": architecture}
    for name, value in given.items():
        if name in SAE_FIELDS:
            out[SAE_FIELDS[name]] = value
        elif name == "matryoshka_widths":
            out["group_fractions"] = _fractions(value, int(given["d_sae"]))
        elif name == "dead_feature_threshold":
            out["dead_after_inputs"] = value
        elif name == "normalize_activations" and value == "expected_average_only_in":
            out["scale_inputs"] = True
        elif name not in SAE_IGNORED and name in defaults and value != defaults[name]:
            raise ValueError(_default_only(f"sae.{name}", defaults[name]))
    k = out.get("k")
    if isinstance(k, float):
        if not k.is_integer():
            raise ValueError(f"sae.k={k}: the runner keeps a whole number of latents per input")
        out["k"] = int(k)
    return out


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


def _default_only(name: str, default: Any) -> str:
    return (
        f"{name} cannot be changed for the vision runner (it trains with {default!r}, "
        f"SAELens' default): leave it at {default!r}"
    )
