"""Every spelling a training setting may come in, read into ``VisionSAERunnerConfig``'s fields.

The runner's fields are SAELens' names in SAELens' units. The plugin's earlier names stay
accepted wherever a user gives settings (keyword arguments, ``from_dict`` / ``from_file``,
``--set``, presets, sweep files, a run directory's saved ``config.json``) and are converted
exactly (``PLUGIN_NAMES``, ``PLUGIN_LOGGER_NAMES``, ``training_steps`` and
``log_every_steps``). SAELens' nested ``sae`` / ``logger`` and its settings that are no field
are read by ``sae_lens_config``.

Settings pass through a flat form (``flat_settings``): canonical names, the ``logger``'s fields
as ``logger.NAME``, and ``training_steps`` / ``log_every_steps`` as given (what they convert
into depends on the other settings).
``merge_settings`` lays mappings over each other in that form, a later one replacing an earlier
one's setting of the same concept in whatever spelling; ``field_values`` finishes the units.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from sae_vlm_plugin.training.config_values import coerce_value

PLUGIN_NAMES: dict[str, str] = {
    "model": "model_name",
    "images": "dataset_path",
    "cache_path": "cached_activations_path",
    "batch_size": "train_batch_size_tokens",
    "warmup_steps": "lr_warm_up_steps",
    "run_dir": "checkpoint_path",
    "auxk_alpha": "aux_loss_coefficient",
    "n_batches_for_scaling": "n_batches_for_norm_estimate",
}
"""The plugin's earlier name -> the field (SAELens' name), same unit."""

PLUGIN_LOGGER_NAMES: dict[str, str] = {
    "log_to_wandb": "log_to_wandb",
    "wandb_project": "wandb_project",
    "wandb_entity": "wandb_entity",
    "wandb_id": "wandb_id",
    "run_name": "run_name",
    "wandb_tags": "wandb_tags",
    "wandb_dir": "wandb_dir",
}
"""The plugin's earlier top-level name -> the field of ``logger`` (SAELens' ``LoggingConfig``
name; ``wandb_tags`` / ``wandb_dir`` are the runner's additions to it), same unit."""

LOG_EVERY_STEPS = "log_every_steps"
"""The plugin's earlier logging period, in steps: ``logger.wandb_log_frequency``, same unit. The
evaluation period did not follow it (1000 steps unless ``eval_every_steps`` was given), so
where no evaluation period is given beside it, ``eval_every_steps=1000`` is (and converted into
``eval_every_n_wandb_logs`` where it is a whole number of logs)."""

PLUGIN_EVAL_EVERY_STEPS = 1000

TRAINING_STEPS = "training_steps"
"""The plugin's earlier run length, in steps: ``training_tokens = training_steps *
train_batch_size_tokens`` (exact; SAELens' ``total_training_steps`` reads it back)."""

PAPER_TRAINING_STEPS = 100_000
"""The run length when none is given, in steps at whatever batch size (the paper's)."""

EVAL_LOGS = "logger.eval_every_n_wandb_logs"
LOG_FREQUENCY = "logger.wandb_log_frequency"
CONCEPTS: dict[str, str] = {
    TRAINING_STEPS: "training_tokens",
    LOG_EVERY_STEPS: "logger.wandb_log_frequency",
    "eval_every_steps": EVAL_LOGS,
    "dead_after_inputs": "dead_feature_window",
}
"""Settings that give one concept in two units: a later mapping's replaces an earlier's."""

UNSET_IF_NONE: frozenset[str] = frozenset(
    {"eval_every_steps", "dead_after_inputs", "dead_feature_window"}
)
"""Fields whose None means 'the other unit decides' (as a saved config writes them)."""


def alias_names() -> list[str]:
    """Every earlier spelling the runner still reads."""
    return sorted({*PLUGIN_NAMES, *PLUGIN_LOGGER_NAMES, TRAINING_STEPS, LOG_EVERY_STEPS})


def flat_settings(
    values: Mapping[str, Any], logger_fields: Mapping[str, Any], architectures: Sequence[str]
) -> dict[str, Any]:
    """One mapping of settings, in any spelling, in the flat form. The same setting given twice
    (``batch_size`` and ``train_batch_size_tokens``; a nested ``sae`` value against another
    top-level one) is refused. ``logger_fields``: the ``logger``'s fields and defaults."""
    from sae_vlm_plugin.training.sae_lens_config import (
        logger_settings,
        read_sae_lens_only,
        sae_settings,
    )

    values = dict(values)
    nested_sae, nested_logger = values.pop("sae", None), values.pop("logger", None)
    out: dict[str, Any] = {}
    given_as: dict[str, str] = {}

    def put(name: str, value: Any, source: str) -> None:
        concept = CONCEPTS.get(name, name)
        if concept == EVAL_LOGS:  # eval_every_steps, when set, replaces the logs count
            concept = name
        if concept in given_as:
            raise ValueError(
                f"{source} and {given_as[concept]} name the same setting: give one of them"
            )
        out[name], given_as[concept] = value, source

    for key, value in values.items():
        if key in UNSET_IF_NONE and value is None:
            continue
        if key in PLUGIN_NAMES:
            put(PLUGIN_NAMES[key], value, key)
        elif key in PLUGIN_LOGGER_NAMES:
            put(f"logger.{PLUGIN_LOGGER_NAMES[key]}", value, key)
        else:
            put(key, value, key)
    lm = read_sae_lens_only(out, "cached_activations_path")
    if lm:
        out["extra_metadata"] = {**(out.get("extra_metadata") or {}), "sae_lens_lm_settings": lm}
    nested: list[tuple[str, Any, bool, str]] = []
    if nested_logger is not None:
        settings = logger_settings(nested_logger, logger_fields)
        nested += [(f"logger.{k}", v, weak, f"logger.{k}") for k, v, weak in settings]
    if nested_sae is not None:
        nested += [(k, v, weak, "sae") for k, v, weak in sae_settings(nested_sae, architectures)]
    for name, value, at_default, source in nested:
        taken = [n for n in (name, *_partners(name)) if n in out]
        if at_default and taken:
            continue  # a class default gives way to a setting given elsewhere
        # the same setting in the same unit (log_every_steps is the logger's log frequency)
        same = [n for n in taken if n == name or (n == LOG_EVERY_STEPS and name == LOG_FREQUENCY)]
        if same and out[same[0]] != value:
            raise ValueError(
                f"{same[0]}={out[same[0]]!r} disagrees with the nested SAELens config's "
                f"{value!r} ({source}): set it in one place"
            )
        out[same[0] if same else name] = value
    return out


def _partners(name: str) -> list[str]:
    """The other spellings of ``name``'s concept in the flat form."""
    concept = CONCEPTS.get(name, name)
    return [n for n, c in CONCEPTS.items() if c == concept and n != name] + (
        [concept] if concept != name else []
    )


def merge_settings(*flat: Mapping[str, Any]) -> dict[str, Any]:
    """Flat settings laid over each other: each mapping's settings replace the earlier ones'
    of the same concept (``training_steps`` replaces ``training_tokens``, ...)."""
    out: dict[str, Any] = {}
    for layer in flat:
        concepts = {CONCEPTS.get(name, name) for name in layer}
        out = {k: v for k, v in out.items() if CONCEPTS.get(k, k) not in concepts}
        out.update(layer)
    return out


def field_values(flat: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Flat settings as the runner's field values: ``logger.NAME`` gathered into the logger's
    settings (a dict under ``logger``), ``training_steps`` into ``training_tokens`` (default:
    ``PAPER_TRAINING_STEPS`` steps), ``eval_every_steps`` into ``eval_every_n_wandb_logs`` where
    it is a whole number of logs, and ``dead_after_inputs`` unset where ``dead_feature_window``
    is given. ``defaults``: the runner's field defaults."""
    values = dict(flat)
    logger: dict[str, Any] = {}
    for key in [k for k in values if k.startswith("logger.")]:
        logger[key.removeprefix("logger.")] = values.pop(key)
    logger_defaults = dataclasses.asdict(defaults["logger"])
    unknown = sorted(set(logger) - set(logger_defaults))
    if unknown:
        raise ValueError(
            f"unknown logger settings {unknown}; valid: {', '.join(sorted(logger_defaults))}"
        )
    if LOG_EVERY_STEPS in values:
        logger["wandb_log_frequency"] = values.pop(LOG_EVERY_STEPS)
        if values.get("eval_every_steps") is None and "eval_every_n_wandb_logs" not in logger:
            values["eval_every_steps"] = PLUGIN_EVAL_EVERY_STEPS
    batch = _int(values, "train_batch_size_tokens", defaults)
    if TRAINING_STEPS in values:
        values["training_tokens"] = _int(values, TRAINING_STEPS, defaults) * batch
        del values[TRAINING_STEPS]
    values.setdefault("training_tokens", PAPER_TRAINING_STEPS * batch)
    if values.get("eval_every_steps") is not None:
        every = coerce_value("eval_every_steps", values["eval_every_steps"], int)
        frequency = coerce_value(
            "logger.wandb_log_frequency",
            logger.get("wandb_log_frequency", logger_defaults["wandb_log_frequency"]),
            int,
        )
        if every >= 1 and frequency >= 1 and every % frequency == 0:
            logger["eval_every_n_wandb_logs"] = every // frequency
            values["eval_every_steps"] = None
    if values.get("dead_feature_window") is not None:
        if values.get("dead_after_inputs") is not None:
            raise ValueError(
                "dead_feature_window (steps) and dead_after_inputs (inputs) name the same "
                "setting: give one of them"
            )
        values["dead_after_inputs"] = None
    values["logger"] = logger
    return values


def _int(values: Mapping[str, Any], name: str, defaults: Mapping[str, Any]) -> int:
    return int(coerce_value(name, values.get(name, defaults.get(name)), int))
