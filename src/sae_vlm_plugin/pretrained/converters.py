"""SAELens conversion functions for the plugin's releases.

Each converter has SAELens' loader signature ``(repo_id, folder_name, device, force_download,
cfg_overrides) -> (cfg_dict, state_dict, log_sparsity)`` and is registered by name in
``NAMED_PRETRAINED_SAE_LOADERS`` (``sae_lens_bridge``):

- ``sae_vlm_dictionary_learning``: checkpoints written by the paper's reference code
  (ExplainableML/sae-for-vlm, which vendors saprmarks/dictionary_learning of Jan 2025);
- ``sae_vlm_sae_lens``: SAELens format (``cfg.json`` + ``sae_weights.safetensors``, optional
  ``sparsity.safetensors``), e.g. the plugin's own exports (``loading.export_sae``).

Files come from a HF repo id, a local folder or a ``file://`` URL and load without trusting
them (``files.py``).

Metadata: SAELens' own loaders ``cfg_dict.update(cfg_overrides)``, after which
``SAEConfig.from_dict`` keeps only dataclass fields. For a SAELens >= 6 ``cfg.json`` a top-level
override such as ``model_name`` or ``neuronpedia_id`` is thereby dropped; a ``metadata`` override
replaces the file's metadata, and as it lacks ``sae_lens_version`` the config then takes SAELens'
pre-6.0 path, which rebuilds metadata from top-level keys only - the override and the file's
``hook_name`` are both lost (pinned by ``test_sae_lens_own_loader_loses_release_metadata``).
``apply_overrides`` is the one place that does it right for the plugin: SAEConfig fields go to
the top level, SAELens metadata keys and the ``metadata`` mapping are merged into ``metadata``,
and the release's vision metadata is added last.
"""

from __future__ import annotations

import math
from pathlib import PurePosixPath
from typing import Any

import sae_lens
import torch
from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, SPARSITY_FILENAME
from sae_lens.loading.pretrained_sae_loaders import (
    LLM_METADATA_KEYS,
    handle_config_defaulting,
    read_sae_components_from_disk,
)
from sae_lens.util import str_to_dtype
from safetensors.torch import load_file

from sae_vlm_plugin.json_files import read_json
from sae_vlm_plugin.pretrained.files import fetch, fetch_optional, load_tensors, repo_file
from sae_vlm_plugin.pretrained.schema import VISION_METADATA_KEY

"""Key of a release's ``config_overrides`` holding ``{sae path: vision metadata}``."""

CHECKED_METADATA_KEYS = ("hook_name", "k")
"""Vision metadata that must agree with what the checkpoint itself records, if it records it."""

WEIGHT_SUFFIXES = (".pt", ".pth", ".safetensors")

BATCHTOPK_KEYS = frozenset(
    {"encoder.weight", "encoder.bias", "decoder.weight", "b_dec", "threshold", "k"}
)
MATRYOSHKA_KEYS = frozenset({"W_enc", "b_enc", "W_dec", "b_dec", "threshold", "k", "group_sizes"})

DICT_CLASSES = {
    "BatchTopKSAE": BATCHTOPK_KEYS,
    "MatroyshkaBatchTopKSAE": MATRYOSHKA_KEYS,  # the reference code's spelling
    "MatryoshkaBatchTopKSAE": MATRYOSHKA_KEYS,  # upstream dictionary_learning's later spelling
}
"""dictionary_learning ``dict_class`` names this converter reads, with their state-dict keys."""

TRAINING_ARCHITECTURE_OF_DICT_CLASS = {
    "BatchTopKSAE": "paper_batchtopk",
    "MatroyshkaBatchTopKSAE": "paper_matryoshka_batchtopk",
    "MatryoshkaBatchTopKSAE": "paper_matryoshka_batchtopk",
}

NEEDED_METADATA = ("family", "hook_name", "tokens", "training_architecture")
"""What an SAE must carry to attach to a model, from its registry entry or derived."""


# -- the one place where registry metadata meets a checkpoint's config ----------------------


def apply_overrides(
    cfg_dict: dict[str, Any], cfg_overrides: dict[str, Any] | None, folder_name: str
) -> dict[str, Any]:
    """``cfg_dict`` with SAELens' ``cfg_overrides`` applied so that nothing is dropped.

    Precedence, lowest first: the checkpoint's own metadata, the release's
    ``config_overrides.metadata`` and SAELens metadata keys (``neuronpedia_id``, ...), the
    release's vision metadata for ``folder_name``, completed by ``complete_vision_metadata``.
    SAEConfig fields (``device``, ``dtype``, ``normalize_activations``, ...) go to the top level.
    Raises ValueError if the checkpoint records a different ``hook_name`` or ``k`` than the
    registry, if ``expansion_factor`` disagrees with ``d_sae / d_in``, or if the SAE's family,
    hook, tokens or training architecture is still unknown.
    """
    overrides = dict(cfg_overrides or {})
    vision = dict(overrides.pop(VISION_METADATA_KEY, {}).get(folder_name, {}))
    metadata = dict(cfg_dict.get("metadata") or {})
    metadata.update(overrides.pop("metadata", None) or {})
    for key, value in overrides.items():
        if key not in LLM_METADATA_KEYS:
            cfg_dict[key] = value
        elif value is not None:
            metadata[key] = value
    for key in CHECKED_METADATA_KEYS:
        recorded = metadata.get(key)
        if key in vision and recorded is not None and recorded != vision[key]:
            raise ValueError(
                f"{folder_name}: the registry says {key}={vision[key]!r} but the checkpoint "
                f"records {key}={recorded!r}; the entry points at the wrong SAE or says the "
                "wrong thing"
            )
    metadata.update(vision)
    if vision:  # a registry entry's SAE (a direct call without one converts only)
        complete_vision_metadata(metadata, cfg_dict, folder_name)
    # Marks the dict as SAELens >= 6 format, which it now is, so that SAE.from_pretrained's own
    # handle_config_defaulting leaves it alone (SAEMetadata defaults to the same value).
    metadata.setdefault("sae_lens_version", sae_lens.__version__)
    cfg_dict["metadata"] = metadata
    expansion = metadata.get("expansion_factor")
    if expansion is not None and not math.isclose(cfg_dict["d_sae"], expansion * cfg_dict["d_in"]):
        raise ValueError(
            f"{folder_name}: the registry says expansion_factor={expansion} but the weights have "
            f"d_sae={cfg_dict['d_sae']} for d_in={cfg_dict['d_in']}"
        )
    return cfg_dict


def complete_vision_metadata(
    metadata: dict[str, Any], cfg_dict: dict[str, Any], folder_name: str
) -> None:
    """Fill in, in place, the vision metadata a user's registry entry left out, from what the
    checkpoint and the model say; raise ValueError naming what is still unknown.

    - ``hook_name``: a dictionary_learning ``config.json``'s integer ``layer`` gives
      ``blocks.{layer}.hook_resid_post`` (a SAELens ``cfg.json`` already carries it);
      ``layer`` then follows from a block hook name.
    - ``training_architecture``: from the dictionary_learning ``dict_class``, else the SAELens
      ``architecture`` it loads as; ``k`` from the weights or ``cfg.json``.
    - ``family``: from the model's own config (``families.family_for_model``).
    """
    from sae_vlm_plugin.hooks import block_hook_name, parse_block_hook

    trainer = metadata.get("dictionary_learning_config") or {}
    layer = trainer.get("layer")
    if not metadata.get("hook_name") and isinstance(layer, int) and not isinstance(layer, bool):
        metadata["hook_name"] = block_hook_name(layer)
    parsed = parse_block_hook(metadata.get("hook_name") or "")
    if parsed is not None:
        metadata.setdefault("layer", parsed[1])
    if not metadata.get("training_architecture"):
        dict_class = str(metadata.get("dict_class"))
        metadata["training_architecture"] = TRAINING_ARCHITECTURE_OF_DICT_CLASS.get(
            dict_class, cfg_dict.get("architecture")
        )
    if metadata.get("k") is None and cfg_dict.get("k") is not None:
        metadata["k"] = cfg_dict["k"]
    if not metadata.get("family") and metadata.get("model_name"):
        from sae_vlm_plugin.families.registry import family_for_model

        try:
            metadata["family"] = family_for_model(metadata["model_name"]).name
        except (OSError, ValueError) as error:
            raise ValueError(
                f"{folder_name}: the registry entry gives no family, and it could not be derived "
                f"from the model {metadata['model_name']!r} ({error}); add metadata.family"
            ) from error
    missing = [key for key in NEEDED_METADATA if not metadata.get(key)]
    if missing:
        raise ValueError(
            f"{folder_name}: neither the registry entry nor the checkpoint says {', '.join(missing)}"
            f"; add {', '.join(f'metadata.{key}' for key in missing)} to the entry (tokens: cls, "
            "patches, all, mean or random_N; hook_name: e.g. blocks.22.hook_resid_post)"
        )


# -- the paper's checkpoints (dictionary_learning) ------------------------------------------


def from_dictionary_learning(
    state: dict[str, torch.Tensor], trainer_config: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A dictionary_learning BatchTopK / Matryoshka-BatchTopK state dict as SAELens ``jumprelu``.

    What the reference code computes at inference (``encode(use_threshold=True)``,
    ``trainers/batch_top_k.py`` and ``trainers/matroyshka_batch_top_k.py``)::

        pre   = ReLU((x - b_dec) W_enc + b_enc)        # b_dec IS subtracted before encoding
        f     = pre * 1[pre > theta]                   # theta: one scalar for every latent
        x_hat = f W_dec + b_dec

    with ``W_enc: (d_in, d_sae)``, ``W_dec: (d_sae, d_in)``. BatchTopKSAE stores them as
    ``nn.Linear`` weights, so ``W_enc = encoder.weight.T``, ``b_enc = encoder.bias``,
    ``W_dec = decoder.weight.T``; MatroyshkaBatchTopKSAE stores ``W_enc``, ``b_enc``, ``W_dec``
    as above. Matryoshka's encode also zeroes latents from ``group_indices[active_groups]`` on,
    but a loaded SAE has every group active, so that is ``d_sae`` and nothing is zeroed: at
    inference both are the same map (``group_sizes`` only matter for prefix reconstructions and
    are kept in the metadata). The saved weights already have the training input scaling folded
    in (``training.py`` scales biases and theta by the norm factor), so they take raw activations.

    SAELens' JumpReLU with ``apply_b_dec_to_input=True`` computes
    ``h = (x - b_dec) W_enc + b_enc; f = ReLU(h) * 1[h > threshold]; x_hat = f W_dec + b_dec``.
    With ``threshold = theta`` on every latent this equals the reference for any theta: for
    theta >= 0, ``pre > theta`` iff ``h > theta``; for theta < 0 (theta is -1 until step 1000
    of training), both masks keep every non-zero ``ReLU(h)``.

    ``trainer_config`` (the ``trainer`` block of ``config.json``), when given, must name a
    supported ``dict_class`` matching the weights and agree on ``activation_dim``, ``dict_size``
    and ``k``; it is kept in the metadata.
    """
    keys = frozenset(state)
    if keys == BATCHTOPK_KEYS:
        kind = "BatchTopKSAE"
        W_enc, b_enc = state["encoder.weight"].T, state["encoder.bias"]
        W_dec = state["decoder.weight"].T
    elif keys == MATRYOSHKA_KEYS:
        kind = "MatroyshkaBatchTopKSAE"
        W_enc, b_enc, W_dec = state["W_enc"], state["b_enc"], state["W_dec"]
    else:
        raise ValueError(
            f"not a dictionary_learning BatchTopK / Matryoshka-BatchTopK checkpoint: keys "
            f"{sorted(keys)}; expected BatchTopKSAE keys {sorted(BATCHTOPK_KEYS)} or "
            f"MatroyshkaBatchTopKSAE keys {sorted(MATRYOSHKA_KEYS)}"
        )
    d_in, d_sae = W_enc.shape
    b_dec, theta, k = state["b_dec"], state["threshold"], int(state["k"].item())
    expected = {"W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
    for name, tensor in (("W_dec", W_dec), ("b_enc", b_enc), ("b_dec", b_dec)):
        if tuple(tensor.shape) != expected[name]:
            raise ValueError(
                f"{kind} checkpoint: {name} has shape {tuple(tensor.shape)}, expected "
                f"{expected[name]} for d_in={d_in}, d_sae={d_sae}"
            )
    if tuple(theta.shape) not in ((), (d_sae,)):
        raise ValueError(f"{kind} checkpoint: threshold has shape {tuple(theta.shape)}")
    metadata: dict[str, Any] = {"source_format": "dictionary_learning", "dict_class": kind, "k": k}
    if kind == "MatroyshkaBatchTopKSAE":
        group_sizes = [int(size) for size in state["group_sizes"].tolist()]
        if sum(group_sizes) != d_sae:
            raise ValueError(f"{kind} checkpoint: group_sizes {group_sizes} do not sum to {d_sae}")
        metadata["group_sizes"] = group_sizes
    if trainer_config is not None:
        _check_trainer_config(
            trainer_config, kind, {"activation_dim": d_in, "dict_size": d_sae, "k": k}
        )
        metadata["dict_class"] = trainer_config["dict_class"]
        metadata["dictionary_learning_config"] = trainer_config
    cfg_dict = {
        "architecture": "jumprelu",
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
    }
    state_dict = {
        "W_enc": W_enc.contiguous(),
        "b_enc": b_enc.clone(),
        "W_dec": W_dec.contiguous(),
        "b_dec": b_dec.clone(),
        "threshold": theta.to(W_enc.dtype).expand(d_sae).clone(),
    }
    return cfg_dict, state_dict


def _check_trainer_config(trainer: dict[str, Any], kind: str, values: dict[str, int]) -> None:
    dict_class = trainer.get("dict_class")
    if dict_class not in DICT_CLASSES:
        raise ValueError(
            f"config.json names dict_class {dict_class!r}; this converter reads "
            f"{', '.join(DICT_CLASSES)} (SAELens' own dictionary_learning_1 loader covers "
            "other dictionary_learning classes)"
        )
    if DICT_CLASSES[dict_class] != DICT_CLASSES[kind]:
        raise ValueError(f"config.json says dict_class {dict_class!r} but the weights are a {kind}")
    for key, actual in values.items():
        if key in trainer and trainer[key] != actual:
            raise ValueError(f"config.json says {key}={trainer[key]} but the weights have {actual}")


def dictionary_learning_loader(
    repo_id: str,
    folder_name: str,
    device: str = "cpu",
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], None]:
    """Loader ``sae_vlm_dictionary_learning``.

    ``folder_name`` is the weights file (``.../trainer_0/checkpoints/ae_100000.pt``,
    ``.../ae.pt`` or a ``.safetensors`` copy) or a trainer folder holding ``ae.pt``. The
    trainer's ``config.json`` (beside the file, or one level above a ``checkpoints`` folder) is
    read if present and cross-checked; the weights alone suffice.
    """
    weights_name = (
        folder_name if folder_name.endswith(WEIGHT_SUFFIXES) else repo_file(folder_name, "ae.pt")
    )
    state = load_tensors(fetch(repo_id, weights_name, force_download))
    trainer_folder = PurePosixPath(weights_name).parent
    if trainer_folder.name == "checkpoints":
        trainer_folder = trainer_folder.parent
    config_path = fetch_optional(
        repo_id, repo_file(str(trainer_folder), "config.json"), force_download
    )
    trainer = None
    if config_path is not None:
        config = read_json(config_path)
        if not isinstance(config, dict) or not isinstance(config.get("trainer"), dict):
            raise ValueError(f"{config_path}: a dictionary_learning config.json has a 'trainer'")
        trainer = config["trainer"]
    cfg_dict, state_dict = from_dictionary_learning(state, trainer)
    cfg_dict["device"] = device
    cfg_dict = apply_overrides(cfg_dict, cfg_overrides, folder_name)
    dtype = str_to_dtype(cfg_dict["dtype"])
    return cfg_dict, {k: v.to(device=device, dtype=dtype) for k, v in state_dict.items()}, None


def dictionary_learning_config(
    repo_id: str,
    folder_name: str,
    device: str = "cpu",
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Config getter ``sae_vlm_dictionary_learning`` (reads the weights: they hold the sizes)."""
    return dictionary_learning_loader(repo_id, folder_name, device, force_download, cfg_overrides)[
        0
    ]


# -- SAELens format ----------------------------------------------------------------------------


def sae_lens_format_config(
    repo_id: str,
    folder_name: str,
    device: str = "cpu",
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Config getter ``sae_vlm_sae_lens``: ``cfg.json`` brought to SAELens 6 form, overridden."""
    path = fetch(repo_id, repo_file(folder_name, SAE_CFG_FILENAME), force_download)
    cfg_dict = handle_config_defaulting(read_json(path))
    cfg_dict["device"] = device
    return apply_overrides(cfg_dict, cfg_overrides, folder_name)


def sae_lens_format_loader(
    repo_id: str,
    folder_name: str,
    device: str = "cpu",
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], torch.Tensor | None]:
    """Loader ``sae_vlm_sae_lens``: a folder written by ``SAE.save_model`` (any SAELens SAE)."""
    cfg_dict = sae_lens_format_config(repo_id, folder_name, device, force_download, cfg_overrides)
    weights = fetch(repo_id, repo_file(folder_name, SAE_WEIGHTS_FILENAME), force_download)
    cfg_dict, state_dict = read_sae_components_from_disk(cfg_dict, weights, device)
    sparsity = fetch_optional(repo_id, repo_file(folder_name, SPARSITY_FILENAME), force_download)
    log_sparsity = load_file(str(sparsity), device=device)["sparsity"] if sparsity else None
    return cfg_dict, state_dict, log_sparsity


LOADERS = {
    "sae_vlm_dictionary_learning": dictionary_learning_loader,
    "sae_vlm_sae_lens": sae_lens_format_loader,
}
CONFIG_GETTERS = {
    "sae_vlm_dictionary_learning": dictionary_learning_config,
    "sae_vlm_sae_lens": sae_lens_format_config,
}
