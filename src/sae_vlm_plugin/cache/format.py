"""The activation cache's format: names, settings and the manifest (``cache.json``).

``CacheSettings`` is everything that decides a cache's contents (a resume must match it);
``check_manifest`` checks a ``cache.json``'s shape before anything reads a field of it (a
hand-edited or damaged manifest - a count of NaN, a missing ``hooks`` table - is named, file
and field, instead of surfacing as a KeyError deep inside verification or training);
``weights_fingerprint`` and ``ids_fingerprint`` tell a resume with other weights or other
images from the same run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch

CACHE_FORMAT = "sae_vlm_plugin.activation_cache"
CACHE_VERSION = 1
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def shard_name(shard: int) -> str:
    return f"shard_{shard:06d}.safetensors"


def shard_index(path: Path) -> int:
    """The shard a file of ``shard_name`` holds (stamped into it: a copy of another shard of
    the same cache is then told apart)."""
    return int(path.name.removeprefix("shard_").removesuffix(".safetensors"))


def stream_shard_name(source_shard: int, chunk: int) -> str:
    """The file of chunk ``chunk`` (``images_per_shard`` images) of a stream's shard
    ``source_shard``, in a cache extracted from an ``ImageStream``."""
    return f"shard_{source_shard:06d}_{chunk:06d}.safetensors"


def stream_shard_position(path: Path) -> tuple[int, int]:
    """``(source shard, chunk)`` of a ``stream_shard_name`` file."""
    source_shard, chunk = path.name.removeprefix("shard_").removesuffix(".safetensors").split("_")
    return int(source_shard), int(chunk)


def shard_label(path: Path) -> str:
    """What a shard file stamps as its place in the cache: the shard number (``shard_name``)
    or ``<source shard>_<chunk>`` (``stream_shard_name``)."""
    stem = path.name.removeprefix("shard_").removesuffix(".safetensors")
    return str(int(stem)) if stem.isdigit() else stem


def ids_fingerprint(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


WEIGHT_SAMPLES_PER_TENSOR = 64


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A cheap hash of a model's weights, so that resuming an extraction with other weights
    (another random init, a fine-tune, a different checkpoint under the same name) is refused
    instead of mixing two models' activations in one cache.

    It hashes every state-dict entry in name order: its name, shape, dtype and
    ``WEIGHT_SAMPLES_PER_TENSOR`` values at evenly spaced positions of the flattened tensor
    (as float64), so it costs a few KB per tensor whatever the model's size. Loads of the same
    weights give the same hash on any device; two random inits differ in every randomly
    initialised tensor. A change confined to unsampled positions goes unnoticed.
    """
    digest = hashlib.sha256()
    steps = torch.arange(WEIGHT_SAMPLES_PER_TENSOR)
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        # Integer positions i * (n - 1) // (S - 1): float32 positions round past the end of
        # tensors over 2**24 values (open_clip's token embedding, LLaVA's language model).
        positions = steps * max(flat.numel() - 1, 0) // (WEIGHT_SAMPLES_PER_TENSOR - 1)
        sample = flat[positions.to(flat.device)] if flat.numel() else flat
        digest.update(f"{name}{list(tensor.shape)}{tensor.dtype}".encode())
        digest.update(sample.to("cpu", torch.float64).numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class CacheSettings:
    """Everything that decides a cache's contents; a resume must match it exactly."""

    model: str
    family: str
    hooks: tuple[str, ...]
    tokens: str
    dtype: str
    images_per_shard: int
    n_images: int
    image_ids_sha256: str

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> CacheSettings:
        """The settings recorded in a ``cache.json``."""
        return cls(**{**manifest["settings"], "hooks": tuple(manifest["settings"]["hooks"])})

    def differences(self, other: CacheSettings) -> list[str]:
        mine, theirs = vars(self), vars(other)
        return [
            f"{key}: {theirs[key]!r} in the cache, {mine[key]!r} now"
            for key in mine
            if mine[key] != theirs[key]
        ]

    def digest(self) -> str:
        """A short hash of these settings, stamped into every shard so that a shard copied in
        from another cache is recognised as foreign."""
        return hashlib.sha256(json.dumps(vars(self), sort_keys=True).encode()).hexdigest()[:16]


def _is_count(value: Any, low: int) -> bool:
    return type(value) is int and value >= low


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


SETTINGS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model": (_is_text, "a string"),
    "family": (_is_text, "a string"),
    "hooks": (
        lambda v: isinstance(v, list) and bool(v) and all(map(_is_text, v)),
        "a non-empty list of hook names",
    ),
    "tokens": (_is_text, "a string"),
    "dtype": (lambda v: v in ("float32", "float16", "bfloat16"), "float32, float16 or bfloat16"),
    "images_per_shard": (lambda v: _is_count(v, 1), "an integer >= 1"),
    "n_images": (lambda v: _is_count(v, 0), "an integer >= 0"),
    "image_ids_sha256": (_is_text, "a string"),
}
"""Each field of ``settings``: its test and what it must be."""


def check_manifest(manifest: dict[str, Any], path: Path) -> None:
    """ValueError naming ``path`` and the field, unless ``manifest`` has every field the cache
    reads, of the right type: ``version``, ``settings`` (``SETTINGS``), ``hooks`` (a ``d_in``
    per hook of the settings), ``complete`` and, if present, ``shard_rows`` (row counts)."""

    def refuse(field: str, expected: str, value: Any) -> NoReturn:
        raise ValueError(f"{path}: {field} must be {expected}, got {value!r}")

    if not _is_count(manifest.get("version"), 1):
        refuse("version", "an integer >= 1", manifest.get("version"))
    settings = manifest.get("settings")
    if not isinstance(settings, dict):
        refuse("settings", "a mapping", settings)
    for name, (test, expected) in SETTINGS.items():
        if not test(settings.get(name)):
            refuse(f"settings.{name}", expected, settings.get(name))
    hooks = manifest.get("hooks")
    if not isinstance(hooks, dict):
        refuse("hooks", "a mapping of hook names to {d_in: ...}", hooks)
    for hook in settings["hooks"]:
        entry = hooks.get(hook)
        d_in = entry.get("d_in") if isinstance(entry, dict) else None
        if not _is_count(d_in, 1):
            refuse(f"hooks.{hook}.d_in", "an integer >= 1", d_in)
    if not isinstance(manifest.get("complete"), bool):
        refuse("complete", "true or false", manifest.get("complete"))
    stream = manifest.get("stream")
    if stream is not None and not (
        isinstance(stream, dict) and stream.get("resume") == "skip by count"
    ):
        refuse("stream", "a mapping with resume 'skip by count'", stream)
    rows = manifest.get("shard_rows", {})
    if not isinstance(rows, dict) or not all(
        isinstance(counts, list) and all(_is_count(n, 0) for n in counts)
        for counts in rows.values()
    ):
        refuse("shard_rows", "a mapping of hook names to lists of row counts", rows)
