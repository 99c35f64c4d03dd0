"""A resumable on-disk activation cache, and the batch provider SAELens' ``SAETrainer`` reads.

Layout of a cache directory::

    cache.json                      settings, per-hook widths, progress, library versions
    images.json                     image ids and labels, in source order
    <hook name>/shard_000000.safetensors
                                    rows of images [s * images_per_shard, (s + 1) * images_per_shard):
                                    ``activations`` (rows, d_in), ``image_index``, ``token_index``

Shards are written atomically and cover fixed image ranges, so an interrupted extraction
resumes to exactly the rows of an uninterrupted one, under ``torchrun`` too (``write``).

A cache extracted from a stream (``ImageStream``: a streamed HF dataset) has one file per
``images_per_shard`` images of each stream shard, ``shard_<stream shard>_<chunk>.safetensors``,
and a ``stream`` section in ``cache.json`` (``stream_write``).

The package: ``format`` (names, settings, manifest checks), ``shards`` (one shard file),
``manifest`` (opening ``cache.json`` for an extraction), ``write`` (``extract_to_cache``),
``stream_write`` (streams), ``read`` (``ActivationCache``), ``verify`` (``verify_cache``),
``commands`` (``sae-vlm extract`` and ``sae-vlm cache verify``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sae_vlm_plugin._lazy import lazy_attribute

_LAZY_API: dict[str, str] = {
    "ActivationCache": "sae_vlm_plugin.cache.read",
    "CacheReport": "sae_vlm_plugin.cache.verify",
    "CacheSettings": "sae_vlm_plugin.cache.format",
    "extract_to_cache": "sae_vlm_plugin.cache.write",
    "verify_cache": "sae_vlm_plugin.cache.verify",
    "weights_fingerprint": "sae_vlm_plugin.cache.format",
}

if TYPE_CHECKING:
    from sae_vlm_plugin.cache.format import CacheSettings as CacheSettings
    from sae_vlm_plugin.cache.format import weights_fingerprint as weights_fingerprint
    from sae_vlm_plugin.cache.read import ActivationCache as ActivationCache
    from sae_vlm_plugin.cache.verify import CacheReport as CacheReport
    from sae_vlm_plugin.cache.verify import verify_cache as verify_cache
    from sae_vlm_plugin.cache.write import extract_to_cache as extract_to_cache

__all__ = sorted(_LAZY_API)


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _LAZY_API, name, globals())
