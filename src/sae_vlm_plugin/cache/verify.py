"""``verify_cache``: a cache's shards checked against its manifest, from the files' headers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sae_vlm_plugin.cache.read import ActivationCache
from sae_vlm_plugin.cache.shards import header_rows


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
                n_rows=sum(header_rows(p) for p in cache.shard_paths(hook)),
            )
        )
    return CacheReport(cache.path, cache.complete, summaries, problems)


def _image_table_problems(cache: ActivationCache) -> list[str]:
    """What is wrong with ``images.json``: unreadable, or not one id per image of the run."""
    path = cache.path / "images.json"
    if cache.stream is not None and not cache.complete:
        return []  # a stream's image table is written when its extraction completes
    try:
        n_ids = len(cache.image_ids)
    except (OSError, ValueError, KeyError, TypeError) as error:
        return [f"{path}: unreadable ({type(error).__name__}: {error})"]
    n_images = cache.n_images
    return [] if n_ids == n_images else [f"{path}: {n_ids} image ids, the manifest says {n_images}"]
