"""Writing a cache from an ``ImageStream`` (images read in order, shard by shard), resumably.

The stream's shard ``j`` is cut into chunks of ``images_per_shard`` images in reading order;
chunk ``c`` is the file ``shard_<j>_<c>.safetensors`` of every hook (``stream_shard_name``),
written atomically, its header recording the chunk's image ids, labels and whether shard ``j``
ends with it. ``image_index`` in a chunk is the image's position within shard ``j``; the
manifest of the finished cache records where each shard starts in the whole (``first_image``),
and ``ActivationCache.load`` adds it.

Resume: a rerun finds, for every shard, the sound chunks written in sequence; the next chunk
starts at image ``c * images_per_shard`` of the shard, reached as the stream allows (the
manifest's ``stream.resume``: ``skip by count`` reads and drops the rows before it, undecoded).
No row is extracted twice and none is lost, so the finished cache equals an uninterrupted one.

Under ``torch.distributed`` rank ``r`` of ``N`` reads the shards ``j`` with ``j % N == r``
(disjoint reads); the files are those one process writes, so the caches are equal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sae_vlm_plugin.activations import iter_extracted_batches
from sae_vlm_plugin.cache.format import (
    CacheSettings,
    stream_shard_name,
    weights_fingerprint,
    write_json_atomic,
)
from sae_vlm_plugin.cache.manifest import open_manifest
from sae_vlm_plugin.cache.read import ActivationCache
from sae_vlm_plugin.cache.shards import shard_metadata, shard_problems, tensor_shapes, write_shard
from sae_vlm_plugin.distributed import DataParallel
from sae_vlm_plugin.hooks import HookPoint
from sae_vlm_plugin.images.stream import ImageStream, StreamItem, items_source
from sae_vlm_plugin.model import VisionModel
from sae_vlm_plugin.tokens import TokenSelection

logger = logging.getLogger(__name__)


def stream_fingerprint(stream: ImageStream) -> str:
    """What identifies a stream before it is read: its description and shard names."""
    text = "\n".join([stream.description, *stream.shard_names])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def extract_stream(
    model: VisionModel,
    stream: ImageStream,
    points: Sequence[HookPoint],
    selection: TokenSelection,
    root: Path,
    *,
    batch_size: int,
    dtype: str,
    images_per_shard: int,
    skip_unreadable: bool,
    num_workers: int,
    dataset_name: str | None,
    progress: bool,
) -> ActivationCache:
    """Extract ``points`` over every image of ``stream`` into the cache at ``root`` (see the
    module docstring); the caller holds ``root`` (``extract_to_cache``)."""
    from tqdm.auto import tqdm

    identity = stream_fingerprint(stream)
    settings = CacheSettings(
        model=model.model_name,
        family=model.family.name,
        hooks=tuple(p.name for p in points),
        tokens=selection.describe(),
        dtype=dtype,
        images_per_shard=images_per_shard,
        n_images=0,  # unknown until read: the finished manifest's stream.n_images
        image_ids_sha256=identity,
    )
    parallel = DataParallel.current()
    rank, world = parallel.rank, parallel.world_size
    fingerprints = {"weights": weights_fingerprint(model.source_module), "images": identity}
    section = {"resume": stream.resume, "shard_names": stream.shard_names}
    arguments: tuple[Any, ...] = (
        root,
        settings,
        fingerprints,
        selection,
        points,
        stream.description,
        None,
        dataset_name,
    )
    if rank == 0:
        manifest = open_manifest(*arguments, stream=section)
    parallel.barrier()
    if rank != 0:
        manifest = open_manifest(*arguments, stream=section, main_rank=False)
    for point in points:
        (root / point.name).mkdir(exist_ok=True)
    cache_id = settings.digest()
    bar = tqdm(
        desc="extract" if world == 1 else f"extract (rank {rank}/{world})",
        unit="img",
        disable=not progress,
    )
    for shard in range(rank, stream.n_shards, world):
        chunk, finished = _resume_point(root, points, shard, dtype, cache_id)
        if finished:
            continue
        if chunk:
            logger.info(
                "resuming shard %s at image %d (%s)",
                stream.shard_names[shard],
                chunk * images_per_shard,
                stream.resume,
            )
        items = iter(stream.read(shard, chunk * images_per_shard))
        pending = next(items, None)
        while True:
            taken: list[StreamItem] = []
            while pending is not None and len(taken) < images_per_shard:
                taken.append(pending)
                pending = next(items, None)
            _write_chunk(
                model,
                points,
                selection,
                root / stream_shard_name(shard, chunk),
                taken,
                first=chunk * images_per_shard,
                end=pending is None,
                batch_size=batch_size,
                dtype=dtype,
                cache_id=cache_id,
                skip_unreadable=skip_unreadable,
                num_workers=num_workers,
                description=f"{stream.description}: {stream.shard_names[shard]}",
            )
            bar.update(len(taken))
            chunk += 1
            if pending is None:
                break
    bar.close()
    parallel.barrier()
    if rank == 0:
        _complete(root, manifest, stream, points)
    parallel.barrier()
    cache = ActivationCache(root)
    if rank == 0 and cache.manifest["skipped_images"]:
        logger.warning(
            "skipped %d unreadable image(s) of %d",
            len(cache.manifest["skipped_images"]),
            cache.n_images,
        )
    return cache


def _resume_point(
    root: Path, points: Sequence[HookPoint], shard: int, dtype: str, cache_id: str
) -> tuple[int, bool]:
    """``(next chunk to write, whether the shard is finished)`` from the chunks of ``shard``
    already written in sequence and sound for every hook (a bad one is warned about, redone)."""
    chunk = 0
    while True:
        paths = [root / p.name / stream_shard_name(shard, chunk) for p in points]
        if not all(path.exists() for path in paths):
            return chunk, False
        problems = [
            problem
            for point, path in zip(points, paths, strict=True)
            for problem in shard_problems(path, point.d_model, dtype, cache_id)
        ]
        if problems:
            warnings.warn(f"re-extracting a bad shard: {'; '.join(problems)}", stacklevel=4)
            return chunk, False
        if shard_metadata(paths[0]).get("end") == "1":
            return chunk, True
        chunk += 1


def _write_chunk(
    model: VisionModel,
    points: Sequence[HookPoint],
    selection: TokenSelection,
    name: Path,
    items: list[StreamItem],
    *,
    first: int,
    end: bool,
    batch_size: int,
    dtype: str,
    cache_id: str,
    skip_unreadable: bool,
    num_workers: int,
    description: str,
) -> None:
    """Extract one chunk (images ``first ..`` of a shard) and write its file for every hook;
    ``image_index`` counts from the shard's first image."""
    parts: dict[str, list[Any]] = {p.name: [] for p in points}
    skipped: list[str] = []
    if items:
        source = items_source(items, description)
        for batch in iter_extracted_batches(
            model,
            source,
            points,
            selection,
            range(len(items)),
            batch_size,
            skip_unreadable=skip_unreadable,
            num_workers=num_workers,
        ):
            skipped.extend(batch.skipped)
            for hook, rows in batch.hooks.items():
                rows.image_index += first
                parts[hook].append(rows)
    extra = {
        "ids": json.dumps([item.image_id for item in items]),
        "labels": json.dumps([item.label for item in items]),
        "first": str(first),
        "end": "1" if end else "0",
    }
    for point in points:
        write_shard(
            name.parent / point.name / name.name,
            parts[point.name],
            point.d_model,
            dtype,
            skipped,
            cache_id,
            extra,
        )


def _complete(
    root: Path, manifest: dict[str, Any], stream: ImageStream, points: Sequence[HookPoint]
) -> None:
    """Write the image table and finish the manifest: every shard's image count, where it
    starts in the whole, its chunk files, rows per file; ``complete``."""
    ids: list[str] = []
    labels: list[str | None] = []
    skipped: list[str] = []
    files: list[str] = []
    rows: dict[str, list[int]] = {p.name: [] for p in points}
    shards = []
    for shard, shard_name_ in enumerate(stream.shard_names):
        first_image, chunk = len(ids), 0
        while True:
            file = stream_shard_name(shard, chunk)
            metadata = shard_metadata(root / points[0].name / file)
            ids += json.loads(metadata["ids"])
            labels += json.loads(metadata["labels"])
            skipped += json.loads(metadata.get("skipped", "[]"))
            files.append(file)
            for point in points:
                rows[point.name].append(tensor_shapes(root / point.name / file)["image_index"][0])
            chunk += 1
            if metadata["end"] == "1":
                break
        shards.append(
            {
                "name": shard_name_,
                "first_image": first_image,
                "n_images": len(ids) - first_image,
                "n_chunks": chunk,
            }
        )
    has_labels = bool(labels) and all(label is not None for label in labels)
    write_json_atomic(
        root / "images.json",
        {"ids": ids, "labels": [str(x) for x in labels] if has_labels else None},
    )
    manifest["stream"] = {
        **manifest["stream"],
        "n_images": len(ids),
        "shards": shards,
        "files": files,
    }
    manifest["shard_rows"] = rows
    manifest["skipped_images"] = sorted(skipped)
    manifest["complete"] = True
    write_json_atomic(root / "cache.json", manifest)
