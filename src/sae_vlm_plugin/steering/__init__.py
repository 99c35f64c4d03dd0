"""Steering LLaVA (or any encoder) through SAE latents, as nnsight edits, and the paper's
steering evaluation.

- ``edits.py``: ``steer`` (clamp / add / scale SAE latents), ``steer_direction`` (a DiffMean
  vector), ``generate`` through the edited model, ``mean_activation`` / ``diffmean_vector``.
- ``evaluation.py``: appendix B's prompts, ``sweep`` (Figure 6), ``run_insertion`` /
  ``run_suppression`` (Table 2), ``steering_score`` (Table 3).
- ``activity.py``: ``latent_activity``: where each latent fires on the tokens the language model
  reads (its unit for clamp multiples; CLS-only latents refused).
- ``batched.py``: ``generate_rows``: one generation, one steering edit per batch row.
- ``census.py``: ``steerability``: what every latent makes the model say, against nulls.
- ``answers.py``: reading answers (gained concepts, repetition).
- ``commands.py``: ``sae-vlm steer``, ``sae-vlm steerability``.

Importing this package imports nothing heavy; each name loads its module on first use.
"""

from __future__ import annotations

from typing import Any

from sae_vlm_plugin._lazy import lazy_attribute

_EDITS = "sae_vlm_plugin.steering.edits"
_EVALUATION = "sae_vlm_plugin.steering.evaluation"
_CENSUS = "sae_vlm_plugin.steering.census"
_LAZY: dict[str, str] = {
    "CENSUS_PROMPTS": _CENSUS,
    "LatentActivity": "sae_vlm_plugin.steering.activity",
    "RowEdit": "sae_vlm_plugin.steering.batched",
    "SteerabilityReport": _CENSUS,
    "UnitSteering": _CENSUS,
    "generate_rows": "sae_vlm_plugin.steering.batched",
    "latent_activity": "sae_vlm_plugin.steering.activity",
    "neutral_images": _CENSUS,
    "steerability": _CENSUS,
    "Steering": _EDITS,
    "default_hook": _EDITS,
    "diffmean_vector": _EDITS,
    "generate": _EDITS,
    "mean_activation": _EDITS,
    "steer": _EDITS,
    "steer_direction": _EDITS,
    "DESCRIBE_PROMPT": _EVALUATION,
    "INSERTION_PROMPTS": _EVALUATION,
    "ONE_WORD_PROMPT": _EVALUATION,
    "generate_text": _EVALUATION,
    "run_insertion": _EVALUATION,
    "run_suppression": _EVALUATION,
    "steering_score": _EVALUATION,
    "sweep": _EVALUATION,
    "white_image": _EVALUATION,
}


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _LAZY, name, globals())


__all__ = sorted(_LAZY)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
