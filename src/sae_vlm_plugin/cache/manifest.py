"""Opening a cache's manifest (``cache.json``) for an extraction: created for a new cache,
checked against the run for a resume (settings, the weights' and the images' fingerprints), and
replaced when the cache it describes never wrote a shard."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from sae_vlm_plugin.cache.format import (
    CACHE_FORMAT,
    CACHE_VERSION,
    CacheSettings,
    check_manifest,
    write_json_atomic,
)
from sae_vlm_plugin.environment import library_versions
from sae_vlm_plugin.families.registry import model_reference
from sae_vlm_plugin.json_files import read_json
from sae_vlm_plugin.tokens import TokenSelection


def discard_unstarted(root: Path, manifest: dict[str, Any]) -> None:
    """Remove what an extraction that wrote no shard left: its manifest, image table and empty
    hook folders (``_open_manifest``). Anything else in ``root`` stays, and is refused there."""
    if manifest.get("format") != CACHE_FORMAT:
        return
    for hook in manifest.get("hooks", {}):
        folder = root / hook
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    for name in ("images.json", "cache.json"):
        (root / name).unlink(missing_ok=True)


def open_manifest(
    root: Path,
    settings: CacheSettings,
    fingerprints: dict[str, str],
    selection: TokenSelection,
    points: Sequence[Any],
    description: str,
    image_table: dict[str, Any] | None,
    dataset_name: str | None,
    *,
    stream: dict[str, Any] | None = None,
    main_rank: bool = True,
) -> dict[str, Any]:
    """The manifest of the cache at ``root``: checked against ``settings`` and the
    ``fingerprints`` of the weights and of the images' contents if it exists (a different run,
    or images changed under the same names, is refused), else created with the image table. A cache that never wrote a shard (a run that failed at its first image, say)
    holds nothing to mix: a run with other settings replaces it. The other ranks of a
    data-parallel run (``main_rank=False``) only check the manifest rank 0 opened: to them a
    cache with no shard yet is rank 0's, just started.

    ``image_table`` (ids and labels) is written to ``images.json`` when the cache is created;
    a cache extracted from a stream learns its images as it reads them, passes None and writes
    the table when it completes. ``stream`` is recorded as the manifest's ``stream`` section."""
    manifest_path = root / "cache.json"
    if main_rank and manifest_path.exists() and not any(root.glob("*/shard_*.safetensors")):
        discard_unstarted(root, read_json(manifest_path))
    if manifest_path.exists():
        manifest = read_json(manifest_path)
        if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
            raise ValueError(f"{root} holds a cache.json that is not an activation cache")
        check_manifest(manifest, manifest_path)
        recorded = CacheSettings.from_manifest(manifest)
        # Older caches record a local model path as given; compare it resolved from here.
        recorded = replace(recorded, model=model_reference(recorded.model, strict=False))
        if recorded != settings:
            raise ValueError(
                f"{root} holds a different extraction run; refusing to mix them. Differences: "
                + "; ".join(settings.differences(recorded))
                + ". Use another output directory, or delete this one."
            )
        check_weights(root, manifest, fingerprints["weights"], settings.model)
        check_images(root, manifest, fingerprints["images"])
        if manifest["settings"]["model"] != settings.model:  # record the resolved path
            manifest["settings"]["model"] = settings.model
            write_json_atomic(manifest_path, manifest)
    else:
        root.mkdir(parents=True, exist_ok=True)
        # What a run killed while creating the manifest leaves behind: it is started afresh.
        unfinished_start = {"images.json", ".images.json.tmp", ".cache.json.tmp"}
        foreign = sorted(p.name for p in root.iterdir() if p.name not in unfinished_start)
        if foreign:
            raise ValueError(
                f"{root} is not empty ({', '.join(foreign[:5])}) and holds no activation cache; "
                "choose an empty directory"
            )
        manifest = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "settings": vars(settings),
            "token_selection": vars(selection),
            "hooks": {p.name: {"d_in": p.d_model} for p in points},
            "weights_fingerprint": fingerprints["weights"],
            "images_fingerprint": fingerprints["images"],
            "source": description,
            "dataset": dataset_name or description,
            "library_versions": library_versions(),
            "complete": False,
            "skipped_images": [],
        }
        if stream is not None:
            manifest["stream"] = stream
        if image_table is not None:
            write_json_atomic(root / "images.json", image_table)
        write_json_atomic(manifest_path, manifest)
    return manifest


def check_weights(root: Path, manifest: dict[str, Any], weights: str, model: str) -> None:
    """Refuse to resume with weights other than those the cache was started with. A cache
    written before fingerprints were recorded cannot be checked: it resumes with a warning
    (and stays unfingerprinted, since its shards' weights are unknown)."""
    recorded = manifest.get("weights_fingerprint")
    if recorded is None:
        warnings.warn(
            f"{root}/cache.json records no weights fingerprint (an older cache), so it cannot "
            f"be checked that {model} has the weights it was extracted with; resuming",
            stacklevel=4,
        )
    elif recorded != weights:
        raise ValueError(
            f"{root} was extracted from weights with fingerprint {recorded}, but {model} now has "
            f"{weights} (another random init, or changed weights); resuming would mix two "
            "models' activations. Use another output directory, or the same weights."
        )


def check_images(root: Path, manifest: dict[str, Any], images: str) -> None:
    """Refuse to resume over images whose content stamps (``ImageSource.content_stamp``: a
    file's size and modification time) changed since the cache was started: the same names
    would mix old and new images' activations. Caches from before image fingerprints are not
    checked."""
    recorded = manifest.get("images_fingerprint")
    if recorded is not None and recorded != images:
        raise ValueError(
            f"{root}: the images changed since this cache was extracted from them (the same "
            "names, other sizes or modification times); resuming would mix old and new "
            "images' activations. Use another output directory, or delete this one."
        )
