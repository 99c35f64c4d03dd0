"""Writing a cache: ``extract_to_cache`` streams a model's activations into shards, resumably.

Shards cover fixed image ranges and are written atomically (temporary file, then rename), so an
extraction killed at any point and started again with the same settings redoes only the shards
that are missing: the result has exactly the rows of an uninterrupted run. A directory holding a
run with different settings is refused, and so is a resume with other weights or over images
changed under the same names: ``cache.json`` records a fingerprint of the model's weights
(``weights_fingerprint``) and of the images' contents (``ImageSource.fingerprint``) when it is
created.

Under ``torch.distributed`` (e.g. ``torchrun --nproc-per-node N sae-vlm extract ...``) rank ``r``
of ``N`` takes the shards ``s`` with ``s % N == r``; rank 0 writes the manifest and, once every
rank is done, marks the cache complete. Shards are the same files a single process writes, so
the finished cache is identical, and a rerun after any rank died redoes only missing shards.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sae_vlm_plugin.activations import iter_extracted_batches, resolve_hooks
from sae_vlm_plugin.cache.format import (
    CACHE_FORMAT,
    CACHE_VERSION,
    STORAGE_DTYPES,
    CacheSettings,
    check_manifest,
    ids_fingerprint,
    shard_name,
    weights_fingerprint,
    write_json_atomic,
)
from sae_vlm_plugin.cache.read import ActivationCache
from sae_vlm_plugin.cache.shards import shard_metadata, shard_problems, tensor_shapes, write_shard
from sae_vlm_plugin.distributed import DataParallel
from sae_vlm_plugin.environment import library_versions
from sae_vlm_plugin.families.registry import model_reference
from sae_vlm_plugin.images import open_image_source
from sae_vlm_plugin.json_files import read_json
from sae_vlm_plugin.model import VisionModel
from sae_vlm_plugin.ownership import owned_directory
from sae_vlm_plugin.tokens import TokenSelection

if TYPE_CHECKING:
    from sae_vlm_plugin.images import ImageInput

logger = logging.getLogger(__name__)


def extract_to_cache(
    model: VisionModel | torch.nn.Module | str,
    images: ImageInput,
    hooks: str | Sequence[str],
    out_dir: str | os.PathLike,
    tokens: str | TokenSelection = "cls",
    batch_size: int = 32,
    *,
    k: int = 2,
    seed: int = 0,
    dtype: str = "float32",
    images_per_shard: int = 256,
    skip_unreadable: bool = False,
    num_workers: int = 0,
    dataset_name: str | None = None,
    progress: bool = True,
) -> ActivationCache:
    """Stream activations of ``hooks`` on ``images`` into the cache at ``out_dir``; resumable.

    Arguments are those of ``extract_activations`` plus the storage ``dtype`` (``float32``,
    ``float16``, ``bfloat16``) and ``images_per_shard``. Running it again on a finished or
    interrupted cache with the same settings completes it without redoing finished shards.
    """
    from tqdm.auto import tqdm

    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"unknown storage dtype {dtype!r}; valid: {', '.join(STORAGE_DTYPES)}")
    if images_per_shard < 1:
        raise ValueError(f"images_per_shard must be >= 1, got {images_per_shard}")
    root = Path(out_dir)
    with _held_by_rank_0(root):  # one extraction at a time per directory
        vision_model = model if isinstance(model, VisionModel) else VisionModel(model)
        selection = TokenSelection.parse(tokens, k=k, seed=seed)
        source = open_image_source(images)
        points = resolve_hooks(vision_model, hooks, selection)
        settings = CacheSettings(
            model=vision_model.model_name,
            family=vision_model.family.name,
            hooks=tuple(p.name for p in points),
            tokens=selection.describe(),
            dtype=dtype,
            images_per_shard=images_per_shard,
            n_images=len(source),
            image_ids_sha256=ids_fingerprint(source.ids),
        )
        manifest_path = root / "cache.json"
        parallel = DataParallel.current()
        rank, world = parallel.rank, parallel.world_size
        weights = weights_fingerprint(vision_model.source_module)
        fingerprints = {"weights": weights, "images": source.fingerprint()}
        if rank == 0:
            manifest = _open_manifest(
                root, settings, fingerprints, selection, points, source, dataset_name
            )
        parallel.barrier()
        if rank != 0:  # checks rank 0's manifest; only rank 0 may replace a cache or start one
            manifest = _open_manifest(
                root,
                settings,
                fingerprints,
                selection,
                points,
                source,
                dataset_name,
                main_rank=False,
            )
        for point in points:
            (root / point.name).mkdir(exist_ok=True)

        n_shards = -(-len(source) // images_per_shard)
        todo = [
            s
            for s in range(n_shards)
            if s % world == rank and _needs_extraction(root, points, s, dtype, settings.digest())
        ]
        mine = [s for s in range(n_shards) if s % world == rank]
        done_images = sum(
            min(images_per_shard, len(source) - s * images_per_shard) for s in set(mine) - set(todo)
        )
        mine_images = sum(min(images_per_shard, len(source) - s * images_per_shard) for s in mine)
        bar = tqdm(
            total=mine_images,
            initial=done_images,
            desc="extract" if world == 1 else f"extract (rank {rank}/{world})",
            unit="img",
            disable=not progress,
        )
        for shard in todo:
            start, end = shard * images_per_shard, min((shard + 1) * images_per_shard, len(source))
            parts: dict[str, list[Any]] = {p.name: [] for p in points}
            skipped: list[str] = []
            for batch in iter_extracted_batches(
                vision_model,
                source,
                points,
                selection,
                range(start, end),
                batch_size,
                skip_unreadable=skip_unreadable,
                num_workers=num_workers,
            ):
                skipped.extend(batch.skipped)
                for name, rows in batch.hooks.items():
                    parts[name].append(rows)
                bar.update(len(batch.image_indices) + len(batch.skipped))
            for point in points:
                write_shard(
                    root / point.name / shard_name(shard),
                    parts[point.name],
                    point.d_model,
                    dtype,
                    skipped,
                    settings.digest(),
                )
        bar.close()
        parallel.barrier()
        skipped_all = {
            image_id
            for s in range(n_shards)
            for image_id in json.loads(
                shard_metadata(root / points[0].name / shard_name(s)).get("skipped", "[]")
            )
        }
        if rank == 0:
            manifest["skipped_images"] = sorted(skipped_all)
            manifest["shard_rows"] = {
                p.name: [
                    tensor_shapes(root / p.name / shard_name(s))["image_index"][0]
                    for s in range(n_shards)
                ]
                for p in points
            }
            manifest["complete"] = True
            write_json_atomic(manifest_path, manifest)
        parallel.barrier()
        cache = ActivationCache(root)
        if skipped_all and rank == 0:
            logger.warning("skipped %d unreadable image(s) of %d", len(skipped_all), len(source))
        return cache


def _held_by_rank_0(root: Path) -> AbstractContextManager[Any]:
    """The extraction's hold on ``root`` (``ownership``); rank 0 holds it for every rank of a
    data-parallel run."""
    if DataParallel.current().rank != 0:
        return nullcontext()
    return owned_directory(root, "extraction")


def _discard_unstarted(root: Path, manifest: dict[str, Any]) -> None:
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


def _open_manifest(
    root: Path,
    settings: CacheSettings,
    fingerprints: dict[str, str],
    selection: TokenSelection,
    points: Sequence[Any],
    source: Any,
    dataset_name: str | None,
    *,
    main_rank: bool = True,
) -> dict[str, Any]:
    """The manifest of the cache at ``root``: checked against ``settings`` and the
    ``fingerprints`` of the weights and of the images' contents if it exists (a different run,
    or images changed under the same names, is refused), else created with the image table. A cache that never wrote a shard (a run that failed at its first image, say)
    holds nothing to mix: a run with other settings replaces it. The other ranks of a
    data-parallel run (``main_rank=False``) only check the manifest rank 0 opened: to them a
    cache with no shard yet is rank 0's, just started."""
    manifest_path = root / "cache.json"
    if main_rank and manifest_path.exists() and not any(root.glob("*/shard_*.safetensors")):
        _discard_unstarted(root, read_json(manifest_path))
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
        _check_weights(root, manifest, fingerprints["weights"], settings.model)
        _check_images(root, manifest, fingerprints["images"])
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
            "source": source.description,
            "dataset": dataset_name or source.description,
            "library_versions": library_versions(),
            "complete": False,
            "skipped_images": [],
        }
        write_json_atomic(root / "images.json", {"ids": source.ids, "labels": source.labels})
        write_json_atomic(manifest_path, manifest)
    return manifest


def _needs_extraction(
    root: Path, points: Sequence[Any], shard: int, dtype: str, cache_id: str
) -> bool:
    """Whether ``shard`` must be (re-)extracted: a hook's file is missing, or is bad
    (truncated, corrupt, foreign, wrong width or dtype), which is warned about and redone."""
    for point in points:
        path = root / point.name / shard_name(shard)
        if not path.exists():
            return True
        problems = shard_problems(path, point.d_model, dtype, cache_id)
        if problems:
            warnings.warn(f"re-extracting a bad shard: {'; '.join(problems)}", stacklevel=3)
            return True
    return False


def _check_weights(root: Path, manifest: dict[str, Any], weights: str, model: str) -> None:
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


def _check_images(root: Path, manifest: dict[str, Any], images: str) -> None:
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
