"""The paper's training runs as named presets (section 4.1, appendix E.3, and its scripts).

Every preset is a ``VisionSAERunnerConfig`` without a data source; add ``dataset_path`` (the
model is set) or ``cached_activations_path`` (or their earlier names ``images`` /
``cache_path``). Names read ``{model}-{hook}-{tokens}-{architecture}-x{expansion}``:

- ``clip-l14-336``: CLIP ViT-L/14-336, CLS of blocks 11, 17, 22, 23 and the final projection
  (``last``), BatchTopK and Matryoshka-BatchTopK at expansions 1, 2, 4, 8, 16, 64 (Table 1);
- ``siglip-so400m``: SigLIP SoViT-400m/14-384 blocks 11, 16, 21 and 26 (``last``), 2 random
  tokens per image (no CLS token);
- ``aimv2-l14``: AIMv2 L/14-224, last block, 2 random tokens; ``webssl-mae300m``: WebSSL
  MAE-300m/14-224, CLS of the last block;
- ``steering``: the LLaVA steering SAE, CLIP block 22, 2 random tokens, Matryoshka x64;
- ``inaturalist-hierarchy``: CLIP's final projection, Matryoshka x2 with groups of 3, 13, 53,
  290 and 1177 latents (the first five levels of the iNaturalist taxonomy).

All share k = 20, batch 4096 (``train_batch_size_tokens``), 100k steps (``training_tokens`` =
100k x the batch), lr 2e-4 / sqrt(d_sae / 2^14), 1000 warm-up steps, aux-loss weight 0.03 (the
reference scripts' ``auxk_alpha``). Random tokens are drawn with replacement
(``random_k+replacement``), as the reference's ``save_activations.py`` does.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from sae_vlm_plugin.training.config_names import merge_settings
from sae_vlm_plugin.training.runner_config import VisionSAERunnerConfig, flat_config

EXPANSIONS = (1, 2, 4, 8, 16, 64)
ARCHITECTURE_NAMES = {"batchtopk": "paper_batchtopk", "matryoshka": "paper_matryoshka_batchtopk"}


@dataclass(frozen=True)
class _Encoder:
    key: str
    model: str
    hooks: dict[str, str]
    """preset hook label -> canonical hook name"""
    tokens: str


ENCODERS = (
    _Encoder(
        "clip-l14-336",
        "openai/clip-vit-large-patch14-336",
        {
            "l11": "blocks.11.hook_resid_post",
            "l17": "blocks.17.hook_resid_post",
            "l22": "blocks.22.hook_resid_post",
            "l23": "blocks.23.hook_resid_post",
            "last": "hook_image_embeds",
        },
        "cls",
    ),
    _Encoder(
        "siglip-so400m",
        "google/siglip-so400m-patch14-384",
        {
            "l11": "blocks.11.hook_resid_post",
            "l16": "blocks.16.hook_resid_post",
            "l21": "blocks.21.hook_resid_post",
            "last": "blocks.26.hook_resid_post",
        },
        "random_k+replacement",
    ),
    _Encoder(
        "aimv2-l14",
        "apple/aimv2-large-patch14-224",
        {"last": "blocks.23.hook_resid_post"},
        "random_k+replacement",
    ),
    _Encoder(
        "webssl-mae300m",
        "facebook/webssl-mae300m-full2b-224",
        {"last": "blocks.23.hook_resid_post"},
        "cls",
    ),
)


def _presets() -> dict[str, dict[str, Any]]:
    presets: dict[str, dict[str, Any]] = {}
    for encoder in ENCODERS:
        tokens_label = "cls" if encoder.tokens == "cls" else "rand2"
        for hook_label, hook in encoder.hooks.items():
            for arch_label, architecture in ARCHITECTURE_NAMES.items():
                for expansion in EXPANSIONS:
                    name = f"{encoder.key}-{hook_label}-{tokens_label}-{arch_label}-x{expansion}"
                    presets[name] = {
                        "model_name": encoder.model,
                        "hook_name": hook,
                        "tokens": encoder.tokens,
                        "architecture": architecture,
                        "expansion_factor": expansion,
                    }
    presets["steering"] = {
        "model_name": "openai/clip-vit-large-patch14-336",
        "hook_name": "blocks.22.hook_resid_post",
        "tokens": "random_k+replacement",
        "tokens_per_image": 2,
        "architecture": "paper_matryoshka_batchtopk",
        "expansion_factor": 64,
    }
    presets["inaturalist-hierarchy"] = {
        "model_name": "openai/clip-vit-large-patch14-336",
        "hook_name": "hook_image_embeds",
        "tokens": "cls",
        "architecture": "paper_matryoshka_batchtopk",
        "expansion_factor": 2,
        "group_fractions": [3 / 1536, 13 / 1536, 53 / 1536, 290 / 1536, 1177 / 1536],
    }
    return presets


def list_presets() -> dict[str, str]:
    """Preset name -> a one-line description (model, hook, tokens, architecture, width)."""
    return {
        name: f"{p['model_name']} {p['hook_name']} tokens={p['tokens']} {p['architecture']} x{p['expansion_factor']}"
        for name, p in _presets().items()
    }


def preset_config(name: str, **overrides: Any) -> VisionSAERunnerConfig:
    """The preset's config with ``overrides`` applied, in any spelling the config takes (a data
    source is required: ``dataset_path`` or ``cached_activations_path``). Give a cache and the
    preset's model and token selection are dropped: the cache records its own (a ``tokens``
    override is still checked against it)."""
    presets = _presets()
    if name not in presets:
        close = difflib.get_close_matches(name, presets, n=5, cutoff=0.5)
        hint = f" Closest: {', '.join(close)}." if close else ""
        raise ValueError(
            f"unknown preset {name!r}.{hint} There are {len(presets)} presets; list them with "
            "`sae-vlm train --list-presets` or sae_vlm_plugin.list_presets()"
        )
    given = flat_config(overrides)
    values = merge_settings(presets[name], {"preset": name}, given)
    if values.get("cached_activations_path") is not None:
        values.pop("model_name", None)
        for key in ("tokens", "tokens_per_image"):
            if key not in given:
                values.pop(key, None)
    return VisionSAERunnerConfig(**values)
