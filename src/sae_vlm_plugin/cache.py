"""A resumable on-disk activation cache, and the batch provider SAELens' ``SAETrainer`` reads.

Layout of a cache directory::

    cache.json                      settings, per-hook widths, progress, library versions
    images.json                     image ids and labels, in source order
    <hook name>/shard_000000.safetensors
                                    rows of images [s * images_per_shard, (s + 1) * images_per_shard):
                                    ``activations`` (rows, d_in), ``image_index``, ``token_index``

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

import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from math import prod
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file

from sae_vlm_plugin.activations import iter_extracted_batches, resolve_hooks
from sae_vlm_plugin.cache_manifest import check_manifest
from sae_vlm_plugin.distributed import DataParallel
from sae_vlm_plugin.environment import library_versions
from sae_vlm_plugin.families.registry import model_reference
from sae_vlm_plugin.images import open_image_source
from sae_vlm_plugin.json_files import read_json
from sae_vlm_plugin.model import VisionModel
from sae_vlm_plugin.ownership import owned_directory
from sae_vlm_plugin.tokens import TokenSelection

CACHE_FORMAT = "sae_vlm_plugin.activation_cache"
CACHE_VERSION = 1
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def _shard_name(shard: int) -> str:
    return f"shard_{shard:06d}.safetensors"


def _shard_index(path: Path) -> int:
    """The shard a file of ``_shard_name`` holds (stamped into it: a copy of another shard of
    the same cache is then told apart)."""
    return int(path.name.removeprefix("shard_").removesuffix(".safetensors"))


def _fingerprint(ids: Sequence[str]) -> str:
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


def extract_to_cache(
    model: VisionModel | torch.nn.Module | str,
    images: Any,
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
            image_ids_sha256=_fingerprint(source.ids),
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
                _write_shard(
                    root / point.name / _shard_name(shard),
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
                _shard_metadata(root / points[0].name / _shard_name(s)).get("skipped", "[]")
            )
        }
        if rank == 0:
            manifest["skipped_images"] = sorted(skipped_all)
            manifest["shard_rows"] = {
                p.name: [
                    _tensor_shapes(root / p.name / _shard_name(s))["image_index"][0]
                    for s in range(n_shards)
                ]
                for p in points
            }
            manifest["complete"] = True
            _write_json_atomic(manifest_path, manifest)
        parallel.barrier()
        cache = ActivationCache(root)
        if skipped_all and progress and rank == 0:
            print(f"skipped {len(skipped_all)} unreadable image(s) of {len(source)}")
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
            _write_json_atomic(manifest_path, manifest)
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
        _write_json_atomic(root / "images.json", {"ids": source.ids, "labels": source.labels})
        _write_json_atomic(manifest_path, manifest)
    return manifest


def _needs_extraction(
    root: Path, points: Sequence[Any], shard: int, dtype: str, cache_id: str
) -> bool:
    """Whether ``shard`` must be (re-)extracted: a hook's file is missing, or is bad
    (truncated, corrupt, foreign, wrong width or dtype), which is warned about and redone."""
    for point in points:
        path = root / point.name / _shard_name(shard)
        if not path.exists():
            return True
        problems = _shard_problems(path, point.d_model, dtype, cache_id)
        if problems:
            warnings.warn(f"re-extracting a bad shard: {'; '.join(problems)}", stacklevel=3)
            return True
    return False


def _shard_problems(
    path: Path, d_in: int, dtype: str, cache_id: str, rows: int | None = None
) -> list[str]:
    """What is wrong with one shard file, from its header alone: unreadable, written for
    another cache (``cache_id``) or as another shard of this one, or not ``rows`` (if known) rows of ``d_in`` ``dtype`` values
    with their image and token indices. Empty when it is sound."""
    try:
        header = _read_header(path)
    except ShardError as error:
        return [str(error)]
    metadata = header.get("__metadata__", {})
    if metadata.get("cache", cache_id) != cache_id:  # shards written before cache ids: none
        return [f"{path}: a shard of another cache (cache id {metadata['cache']}, not {cache_id})"]
    if metadata.get("shard", str(_shard_index(path))) != str(_shard_index(path)):
        return [f"{path}: a copy of shard {metadata['shard']}"]
    expected = {
        "activations": (SAFETENSORS_DTYPES[dtype], 2),
        "image_index": ("I64", 1),
        "token_index": ("I64", 1),
    }
    if set(header) - {"__metadata__"} != set(expected):
        return [
            f"{path}: holds tensors {sorted(set(header) - {'__metadata__'})}, not {sorted(expected)}"
        ]
    problems = [
        f"{path}: {name} is {header[name]['dtype']} of shape {header[name]['shape']}, "
        f"expected {code} with {n_dims} dimension(s)"
        for name, (code, n_dims) in expected.items()
        if header[name]["dtype"] != code or len(header[name]["shape"]) != n_dims
    ]
    if problems:
        return problems
    n_rows, width = header["activations"]["shape"]
    if width != d_in:
        problems.append(f"{path}: activations are {width} wide, the manifest says d_in={d_in}")
    if header["image_index"]["shape"] != [n_rows] or header["token_index"]["shape"] != [n_rows]:
        problems.append(f"{path}: its index tensors do not have one entry per row ({n_rows})")
    if rows is not None and n_rows != rows:
        problems.append(f"{path}: {n_rows} rows, the manifest records {rows}")
    return problems


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


def _write_shard(
    path: Path, parts: list[Any], d_in: int, dtype: str, skipped: list[str], cache_id: str
) -> None:
    if parts:
        activations = torch.cat([p.activations for p in parts])
        image_index = torch.cat([p.image_index for p in parts])
        token_index = torch.cat([p.token_index for p in parts])
    else:
        activations = torch.empty(0, d_in)
        image_index = token_index = torch.empty(0, dtype=torch.long)
    tensors = {
        "activations": activations.to(STORAGE_DTYPES[dtype]).contiguous().cpu(),
        "image_index": image_index.contiguous().cpu(),
        "token_index": token_index.contiguous().cpu(),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    metadata = {"skipped": json.dumps(skipped), "cache": cache_id, "shard": str(_shard_index(path))}
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


class ActivationCache:
    """A finished (or partially written) activation cache directory, for reading."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        manifest_path = self.path / "cache.json"
        if not manifest_path.exists():
            raise FileNotFoundError(f"{self.path} is not an activation cache (no cache.json)")
        self.manifest = read_json(manifest_path)
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != CACHE_FORMAT:
            raise ValueError(f"{manifest_path} is not an activation cache manifest")
        check_manifest(self.manifest, manifest_path)
        if self.manifest["version"] > CACHE_VERSION:
            raise ValueError(
                f"{self.path} was written by cache format v{self.manifest['version']}; "
                f"this sae_vlm_plugin reads up to v{CACHE_VERSION}"
            )
        self._images: dict[str, Any] | None = None

    def __repr__(self) -> str:
        s = self.settings
        return f"ActivationCache({str(self.path)!r}, model={s['model']!r}, hooks={s['hooks']}, tokens={s['tokens']!r})"

    @property
    def settings(self) -> dict[str, Any]:
        return self.manifest["settings"]

    @property
    def hooks(self) -> list[str]:
        return list(self.settings["hooks"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    def d_in(self, hook: str | None = None) -> int:
        return int(self.manifest["hooks"][self._hook(hook)]["d_in"])

    @property
    def image_ids(self) -> list[str]:
        return self._image_table()["ids"]

    @property
    def labels(self) -> list[str] | None:
        return self._image_table()["labels"]

    def _image_table(self) -> dict[str, Any]:
        if self._images is None:
            self._images = read_json(self.path / "images.json")
        return self._images

    def _hook(self, hook: str | None) -> str:
        if hook is None:
            if len(self.hooks) != 1:
                raise ValueError(
                    f"this cache holds several hooks; name one of: {', '.join(self.hooks)}"
                )
            return self.hooks[0]
        if hook not in self.hooks:
            raise ValueError(f"this cache has no hook {hook!r}; it holds: {', '.join(self.hooks)}")
        return hook

    @property
    def n_shards(self) -> int:
        """Shards per hook once complete: one per ``images_per_shard`` images."""
        return -(-self.settings["n_images"] // self.settings["images_per_shard"])

    def _expected_paths(self, hook: str | None) -> list[Path]:
        folder = self.path / self._hook(hook)
        return [folder / _shard_name(s) for s in range(self.n_shards)]

    def shard_paths(self, hook: str | None = None) -> list[Path]:
        """The shard files of ``hook`` written so far (all ``n_shards`` once complete)."""
        return [path for path in self._expected_paths(hook) if path.exists()]

    def shard_problems(self, hook: str | None = None) -> list[str]:
        """What is wrong with ``hook``'s shard files against the manifest, from their headers:
        missing (in a complete cache), stray (not one of this cache's shard names), unreadable,
        written for another cache, or of the wrong width, dtype or row count (row counts are
        recorded when the extraction completes). Empty when every file is sound."""
        name = self._hook(hook)
        expected = self._expected_paths(name)
        strays = sorted(set((self.path / name).glob("shard_*.safetensors")) - set(expected))
        problems = [
            f"{path}: a stray file, not one of this cache's {len(expected)} shards"
            for path in strays
        ]
        rows = self.manifest.get("shard_rows", {}).get(name) or [None] * len(expected)
        if len(rows) != len(expected):
            problems.append(f"the manifest records rows of {len(rows)} shards, not {len(expected)}")
            rows = [None] * len(expected)
        cache_id = CacheSettings.from_manifest(self.manifest).digest()
        for path, n_rows in zip(expected, rows, strict=True):
            if path.exists():
                problems += _shard_problems(
                    path, self.d_in(name), self.settings["dtype"], cache_id, n_rows
                )
            elif self.complete:
                problems.append(f"{path}: missing")
        return problems

    def check_trainable(self, hook: str | None = None, *, allow_incomplete: bool = False) -> None:
        """Raise a ValueError listing what is wrong with ``hook``'s data before training reads
        it, since a killed extraction, or a missing or foreign shard, would otherwise train
        silently on part (or the wrong) data. An incomplete cache passes only with
        ``allow_incomplete`` (its written shards are then still checked)."""
        problems = self.shard_problems(hook)
        if not self.complete and not allow_incomplete:
            problems.insert(
                0,
                f"the extraction did not finish ({len(self.shard_paths(hook))} of "
                f"{self.n_shards} shards written): rerun the same `sae-vlm extract` to finish "
                "it, or set allow_incomplete_cache to train on the shards written",
            )
        if problems:
            raise ValueError(f"cannot train on the cache at {self.path}: " + "; ".join(problems))

    def n_rows(self, hook: str | None = None) -> int:
        return sum(_tensor_shapes(path)["image_index"][0] for path in self.shard_paths(hook))

    def load(
        self, hook: str | None = None, dtype: torch.dtype = torch.float32
    ) -> dict[str, torch.Tensor]:
        """All rows of a hook: ``{"activations": (rows, d_in), "image_index", "token_index"}``."""
        shards = [_read_shard(p) for p in self.shard_paths(hook)]
        return {
            key: torch.cat([s[key] for s in shards]).to(
                dtype if key == "activations" else torch.long
            )
            for key in ("activations", "image_index", "token_index")
        }

    def batches(
        self,
        hook: str | None = None,
        batch_size: int = 4096,
        *,
        shuffle: bool = True,
        seed: int = 0,
        shards_in_buffer: int = 8,
        loop: bool = True,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
        rank: int = 0,
        world_size: int = 1,
        order: Literal["buffered", "reference"] = "buffered",
    ) -> Iterator[torch.Tensor]:
        """``(batch_size, d_in)`` activation batches: a ``DataProvider`` for SAELens' ``SAETrainer``.

        Each epoch visits the shards in a seeded random order, ``shards_in_buffer`` at a time,
        and yields the buffer's rows in a seeded random order; the rows left over at the end
        of a buffer carry into the next. With ``loop`` it cycles forever (epoch ``e`` uses seed
        ``seed + e``), else it stops after one pass, dropping the last partial batch.

        ``order="reference"`` is the order the paper's reference trained in,
        ``itertools.cycle(DataLoader(rows, batch_size, shuffle=True))``: one seeded permutation
        of every row of the hook (all held in memory), cut into batches with the short last
        batch kept, and that same first epoch replayed for as long as training runs. One process
        only (a short batch has no equal shares).

        Data-parallel: with ``world_size`` N > 1 it yields rank ``rank``'s rows
        ``[r * batch_size / N, (r + 1) * batch_size / N)`` of each of those batches (the
        batches are the same for every N). Each rank reads the buffer's shards but gathers,
        converts and moves only its own rows.
        """
        paths = self.shard_paths(hook)
        if not paths:
            raise ValueError(f"{self.path} has no shards for {self._hook(hook)}")
        if self.n_rows(hook) == 0:
            raise ValueError(
                f"{self.path} has 0 rows for {self._hook(hook)}: nothing to read (were all the "
                "images unreadable and skipped?)"
            )
        if world_size < 1 or not 0 <= rank < world_size or batch_size % world_size:
            raise ValueError(
                f"rank {rank} of world_size {world_size} cannot take an equal share of "
                f"batch_size {batch_size}: need 0 <= rank < world_size dividing batch_size"
            )
        if order == "reference":
            if world_size != 1:
                raise ValueError(
                    "order='reference' replays one epoch with its short last batch, which has no "
                    f"equal share for {world_size} ranks; train it in one process"
                )
            yield from self._reference_order_batches(hook, batch_size, seed, loop, dtype, device)
            return
        if order != "buffered":
            raise ValueError(f"order must be 'buffered' or 'reference', got {order!r}")
        share = batch_size // world_size
        first, last = rank * share, (rank + 1) * share
        epoch = 0
        carry: torch.Tensor | None = None  # rows in storage dtype, in stream order
        while True:
            generator = torch.Generator().manual_seed(seed + epoch)
            shard_order = (
                torch.randperm(len(paths), generator=generator).tolist()
                if shuffle
                else range(len(paths))
            )
            ordered = [paths[i] for i in shard_order]
            for start in range(0, len(ordered), shards_in_buffer):
                rows = [
                    _read_shard(p)["activations"] for p in ordered[start : start + shards_in_buffer]
                ]
                buffer = torch.cat(rows if carry is None else [carry, *rows])
                stream = (
                    torch.randperm(len(buffer), generator=generator)
                    if shuffle
                    else torch.arange(len(buffer))
                )
                n_full = len(buffer) // batch_size * batch_size
                for offset in range(0, n_full, batch_size):
                    batch = buffer[stream[offset + first : offset + last]].to(dtype)
                    yield batch.to(device) if device is not None else batch
                carry = buffer[stream[n_full:]]
            epoch += 1
            if not loop:
                return

    def _reference_order_batches(
        self,
        hook: str | None,
        batch_size: int,
        seed: int,
        loop: bool,
        dtype: torch.dtype,
        device: str | torch.device | None,
    ) -> Iterator[torch.Tensor]:
        """``batches(order="reference")``: the first epoch's batches, replayed."""
        rows = self.load(hook, dtype=dtype)["activations"]
        permutation = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
        while True:
            for start in range(0, len(rows), batch_size):
                batch = rows[permutation[start : start + batch_size]]
                yield batch.to(device) if device is not None else batch
            if not loop:
                return


@dataclass(frozen=True)
class HookSummary:
    """One hook of a cache as ``verify_cache`` finds it."""

    hook: str
    d_in: int
    dtype: str
    n_shards: int
    """Shard files present."""
    n_expected: int
    """Shard files a complete cache has."""
    n_rows: int
    """Rows in the readable shards."""

    def describe(self) -> str:
        return (
            f"{self.hook}: {self.n_shards} of {self.n_expected} shards, "
            f"{self.n_rows} rows x {self.d_in} {self.dtype}"
        )


@dataclass(frozen=True)
class CacheReport:
    """What ``verify_cache`` found: a summary per hook and every problem (empty: sound)."""

    path: Path
    complete: bool
    hooks: list[HookSummary]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_cache(path: str | os.PathLike) -> CacheReport:
    """Check an activation cache's shards against its manifest, from the files' headers
    (existence, row counts, width, dtype, safetensors header sanity, cache id); an
    unfinished extraction is a problem too. See ``ActivationCache.shard_problems``."""
    cache = ActivationCache(path)
    problems = [] if cache.complete else [f"{cache.path}: the extraction did not finish"]
    problems += _image_table_problems(cache)
    summaries = []
    for hook in cache.hooks:
        problems += cache.shard_problems(hook)
        summaries.append(
            HookSummary(
                hook=hook,
                d_in=cache.d_in(hook),
                dtype=cache.settings["dtype"],
                n_shards=len(cache.shard_paths(hook)),
                n_expected=cache.n_shards,
                n_rows=sum(_header_rows(p) for p in cache.shard_paths(hook)),
            )
        )
    return CacheReport(cache.path, cache.complete, summaries, problems)


def _image_table_problems(cache: ActivationCache) -> list[str]:
    """What is wrong with ``images.json``: unreadable, or not one id per image of the run."""
    path = cache.path / "images.json"
    try:
        n_ids = len(cache.image_ids)
    except (OSError, ValueError, KeyError, TypeError) as error:
        return [f"{path}: unreadable ({type(error).__name__}: {error})"]
    n_images = cache.settings["n_images"]
    return [] if n_ids == n_images else [f"{path}: {n_ids} image ids, the manifest says {n_images}"]


def _header_rows(path: Path) -> int:
    """The rows of activations a shard's header announces (0 if it cannot be read)."""
    try:
        shape = _tensor_shapes(path).get("activations") or [0]
    except ShardError:
        return 0
    return int(shape[0])


class ShardError(ValueError):
    """A shard file that cannot be this cache's: truncated, corrupt, not safetensors, foreign."""


SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
"""Storage dtype -> its code in a safetensors header."""
_ITEM_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1}
"""Bytes per element of the safetensors dtypes a shard may name."""
MAX_HEADER_BYTES = 100_000_000
"""The largest header safetensors itself accepts."""


def _read_shard(path: Path) -> dict[str, torch.Tensor]:
    """A shard's tensors; its header is checked first, so a bad file raises a ``ShardError``
    naming it instead of whatever the safetensors reader makes of it."""
    _read_header(path)
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own SafetensorError for bad data
        raise ShardError(f"{path}: unreadable safetensors file ({error})") from None


def _read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (an 8-byte little-endian length, then JSON).

    The length is checked against the file's size before anything is read, so a truncated
    file or another format renamed ``.safetensors`` (a pickle's first 8 bytes make a length of
    petabytes) raises a ``ShardError`` naming the file instead of a ``JSONDecodeError`` or a
    ``MemoryError``; the tensors' byte ranges must then exactly fill the rest of the file.
    """
    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(8)
        length = int.from_bytes(prefix, "little")
        if len(prefix) < 8 or length > min(size - 8, MAX_HEADER_BYTES):
            raise ShardError(
                f"{path}: not a safetensors file or truncated (its {size} bytes cannot hold "
                + (f"the {length}-byte header it announces)" if len(prefix) == 8 else "a header)")
            )
        raw = file.read(length)
    try:
        header = json.loads(raw)
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise ShardError(f"{path}: unreadable safetensors header ({error})") from None
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__", {}), dict):
        raise ShardError(f"{path}: its safetensors header is not a JSON object of entries")
    _check_data_extent(path, header, size - 8 - length)
    return header


def _check_data_extent(path: Path, header: dict[str, Any], data_bytes: int) -> None:
    """Each tensor's byte range fits its dtype and shape, and together they end where the
    file does (a truncated file ends early)."""
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = entry["data_offsets"]
            n_bytes = _ITEM_SIZES[entry["dtype"]] * prod(entry["shape"])
        except (KeyError, TypeError, ValueError):
            raise ShardError(f"{path}: malformed safetensors entry for {name!r}") from None
        if stop - begin != n_bytes:
            raise ShardError(f"{path}: tensor {name!r} has {stop - begin} bytes, needs {n_bytes}")
        end = max(end, stop)
    if end != data_bytes:
        raise ShardError(
            f"{path}: its tensors need {end} bytes of data, the file holds {data_bytes} "
            "(truncated or corrupt)"
        )


def _shard_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file, from its header."""
    return dict(_read_header(path).get("__metadata__", {}))


def _tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor shapes from a safetensors header, without reading the data."""
    header = _read_header(path)
    return {name: entry["shape"] for name, entry in header.items() if name != "__metadata__"}
