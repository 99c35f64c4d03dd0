"""Reading a cache: ``ActivationCache``, and the batch provider SAELens' ``SAETrainer`` reads."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch

from sae_vlm_plugin.cache.format import (
    CACHE_FORMAT,
    CACHE_VERSION,
    CacheSettings,
    check_manifest,
    shard_name,
    stream_shard_position,
)
from sae_vlm_plugin.cache.shards import read_shard, shard_problems, tensor_shapes
from sae_vlm_plugin.json_files import read_json


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
    def stream(self) -> dict[str, Any] | None:
        """The manifest's ``stream`` section for a cache extracted from an ``ImageStream``
        (how it resumes; once complete, each stream shard's images and chunk files), else None."""
        return self.manifest.get("stream")

    @property
    def n_images(self) -> int:
        """Images of the run (a stream's are known once it is complete; 0 before)."""
        if self.stream is not None:
            return int(self.stream.get("n_images", 0))
        return int(self.settings["n_images"])

    @property
    def n_shards(self) -> int:
        """Shards per hook once complete: one per ``images_per_shard`` images (from a stream:
        per ``images_per_shard`` images of each stream shard, known once complete)."""
        if self.stream is not None:
            return len(self.stream.get("files", []))
        return -(-self.settings["n_images"] // self.settings["images_per_shard"])

    def _expected_paths(self, hook: str | None) -> list[Path]:
        folder = self.path / self._hook(hook)
        if self.stream is not None:
            if "files" in self.stream:
                return [folder / name for name in self.stream["files"]]
            return sorted(folder.glob("shard_*_*.safetensors"))  # unfinished: what is there
        return [folder / shard_name(s) for s in range(self.n_shards)]

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
                problems += shard_problems(
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
        return int(sum(tensor_shapes(path)["image_index"][0] for path in self.shard_paths(hook)))

    def load(
        self, hook: str | None = None, dtype: torch.dtype = torch.float32
    ) -> dict[str, torch.Tensor]:
        """All rows of a hook: ``{"activations": (rows, d_in), "image_index", "token_index"}``.

        ``image_index`` is the image's position in ``image_ids``; in an unfinished cache from a
        stream, whose shards' places are not known yet, its position in its stream shard."""
        paths = self.shard_paths(hook)
        shards = [read_shard(p) for p in paths]
        if self.stream is not None and "shards" in self.stream:
            for path, shard in zip(paths, shards, strict=True):
                first = self.stream["shards"][stream_shard_position(path)[0]]["first_image"]
                shard["image_index"] = shard["image_index"] + first
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
                    read_shard(p)["activations"] for p in ordered[start : start + shards_in_buffer]
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
