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

``images`` is any form ``sae_vlm_plugin.images.open_images`` reads; one read by position (an
``ImageSource``: folders, tar shards, datasets, parquet, path lists) is written here, a stream
(an ``ImageStream``) by ``stream_write.extract_stream``.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sae_vlm_plugin.activations import iter_extracted_batches, resolve_hooks
from sae_vlm_plugin.cache.format import (
    STORAGE_DTYPES,
    CacheSettings,
    ids_fingerprint,
    shard_name,
    weights_fingerprint,
    write_json_atomic,
)
from sae_vlm_plugin.cache.manifest import open_manifest as _open_manifest
from sae_vlm_plugin.cache.read import ActivationCache
from sae_vlm_plugin.cache.shards import shard_metadata, shard_problems, tensor_shapes, write_shard
from sae_vlm_plugin.distributed import DataParallel
from sae_vlm_plugin.images import ImageStream, open_images
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
    split: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    stream: bool = False,
) -> ActivationCache:
    """Stream activations of ``hooks`` on ``images`` into the cache at ``out_dir``; resumable.

    Arguments are those of ``extract_activations`` plus the storage ``dtype`` (``float32``,
    ``float16``, ``bfloat16``) and ``images_per_shard``; ``images`` is any form ``open_images``
    takes, with its ``split``, ``image_column``, ``label_column`` and ``stream``. Running it
    again on a finished or interrupted cache with the same settings completes it without
    redoing finished shards. A stream (``ImageStream``) is written by ``extract_stream``.
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
        opened = open_images(
            images,
            split=split,
            image_column=image_column,
            label_column=label_column,
            stream=stream,
        )
        points = resolve_hooks(vision_model, hooks, selection)
        if isinstance(opened, ImageStream):
            from sae_vlm_plugin.cache.stream_write import extract_stream

            return extract_stream(
                vision_model,
                opened,
                points,
                selection,
                root,
                batch_size=batch_size,
                dtype=dtype,
                images_per_shard=images_per_shard,
                skip_unreadable=skip_unreadable,
                num_workers=num_workers,
                dataset_name=dataset_name,
                progress=progress,
            )
        source = opened
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
        opening = (
            root,
            settings,
            fingerprints,
            selection,
            points,
            source.description,
            {"ids": source.ids, "labels": source.labels},
            dataset_name,
        )
        if rank == 0:
            manifest = _open_manifest(*opening)
        parallel.barrier()
        if rank != 0:  # checks rank 0's manifest; only rank 0 may replace a cache or start one
            manifest = _open_manifest(*opening, main_rank=False)
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
