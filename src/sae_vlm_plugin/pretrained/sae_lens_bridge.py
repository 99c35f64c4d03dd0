"""The one module that reaches into SAELens internals, so that SAELens sees the plugin's releases.

SAELens 6.54 has no public API for adding pretrained releases. It reads them from
``get_pretrained_saes_directory()``, a ``functools.cache``-d function of
``sae_lens.loading.pretrained_saes_directory`` that parses SAELens' own ``pretrained_saes.yaml``
and that other SAELens modules import by name (``saes.sae``, ``loading.pretrained_sae_loaders``,
``evals``); it finds conversion functions by name in ``NAMED_PRETRAINED_SAE_LOADERS`` and
``NAMED_PRETRAINED_SAE_CONFIG_GETTERS``. So ``install``:

1. replaces that function, in every loaded ``sae_lens`` module holding it, by a wrapper that
   calls the original (whose cache stays SAELens' own) and adds the plugin's releases to the dict
   it returns. The wrapper forwards ``cache_clear`` / ``cache_info``: after
   ``get_pretrained_saes_directory.cache_clear()`` SAELens re-reads its YAML on the next call and
   the wrapper adds the plugin's releases to the fresh dict. Modules imported later
   (``from ... import get_pretrained_saes_directory``) get the wrapper;
2. adds the plugin's conversion functions (``converters.py``) to both name tables, as thin
   wrappers that import ``converters`` on first call.

This module imports SAELens and ``converters`` only inside its functions: ``install`` runs as
the callback of SAELens' import (``_import_hooks``), possibly while the plugin module whose
``import sae_lens`` triggered it is still half-initialised, so it must not need that module.

A plugin release whose name SAELens already uses is refused, never shadowed. Each release's
per-SAE vision metadata travels to the converters inside the directory entry's
``config_overrides`` (keyed by SAE path, ``schema.VISION_METADATA_KEY``), because SAELens
hands a converter only ``(repo_id, folder_name, device, force_download, cfg_overrides)``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

from sae_vlm_plugin.pretrained.schema import CONVERSION_FUNCS, VISION_METADATA_KEY, Release

_DIRECTORY_FUNCTION = "get_pretrained_saes_directory"
_PLUGIN_LOOKUPS: dict[int, Any] = {}
"""The SAELens directory entries this module created, by ``id`` (held, so no id is reused).
Entries stay plain ``PretrainedSAELookup`` objects: no marker attribute that would show up in
``entry.__dict__`` (the ``DataFrame.from_records`` recipe) or in SAELens' own code paths."""


def is_plugin_lookup(lookup: Any) -> bool:
    """Whether a SAELens directory entry came from a ``sae_vlm_plugin`` registry file."""
    return _PLUGIN_LOOKUPS.get(id(lookup)) is lookup


def _deferred(table: str, name: str) -> Callable[..., Any]:
    """``converters.<table>[name]``, imported when SAELens first calls it."""

    def call(*args: Any, **kwargs: Any) -> Any:
        converters = importlib.import_module("sae_vlm_plugin.pretrained.converters")
        return getattr(converters, table)[name](*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__module__ = "sae_vlm_plugin.pretrained.converters"
    return call


_LOADERS = {name: _deferred("LOADERS", name) for name in CONVERSION_FUNCS}
_CONFIG_GETTERS = {name: _deferred("CONFIG_GETTERS", name) for name in CONVERSION_FUNCS}


class DirectoryWithPluginReleases:
    """Stands in for ``get_pretrained_saes_directory``: SAELens' directory plus the plugin's."""

    def __init__(
        self,
        original: Callable[[], dict[str, Any]],
        releases: Callable[[], Mapping[str, Release]],
    ) -> None:
        self.original = original
        self.releases = releases
        self._lookups: dict[str, tuple[Release, Any]] = {}
        self.__wrapped__ = original
        self.__doc__ = original.__doc__

    def __call__(self) -> dict[str, Any]:
        directory = self.original()
        for name, release in self.releases().items():
            lookup = self._lookup(release)
            present = directory.get(name)
            if present is lookup:
                continue
            if present is not None and not is_plugin_lookup(present):
                raise ValueError(_collision_message(release))
            directory[name] = lookup
        return directory

    def cache_clear(self) -> None:
        self.original.cache_clear()  # type: ignore[attr-defined]

    def cache_info(self) -> Any:
        return self.original.cache_info()  # type: ignore[attr-defined]

    def _lookup(self, release: Release) -> Any:
        cached = self._lookups.get(release.name)
        if cached is None or cached[0] is not release:
            cached = (release, to_lookup(release))
            self._lookups[release.name] = cached
        return cached[1]


def install(releases: Callable[[], Mapping[str, Release]]) -> None:
    """Make SAELens see ``releases()`` (read at every directory lookup) and the plugin's
    converters. Idempotent. Lazy: SAELens' own YAML is parsed at the first directory lookup, as
    without the plugin, and that lookup raises ValueError on a release named like one of
    SAELens' own."""
    from sae_lens.loading import pretrained_sae_loaders, pretrained_saes_directory

    current = getattr(pretrained_saes_directory, _DIRECTORY_FUNCTION)
    if isinstance(current, DirectoryWithPluginReleases):
        current.releases = releases
        wrapper = current
    else:
        wrapper = DirectoryWithPluginReleases(current, releases)
        for module in [m for name, m in sys.modules.items() if name.split(".")[0] == "sae_lens"]:
            if getattr(module, _DIRECTORY_FUNCTION, None) is current:
                setattr(module, _DIRECTORY_FUNCTION, wrapper)
    _register(pretrained_sae_loaders.NAMED_PRETRAINED_SAE_LOADERS, _LOADERS)
    _register(pretrained_sae_loaders.NAMED_PRETRAINED_SAE_CONFIG_GETTERS, _CONFIG_GETTERS)


def refuse_sae_lens_names(releases: Mapping[str, Release], where: str) -> None:
    """Raise ValueError if one of ``releases`` has the name of a SAELens release."""
    from sae_lens.loading import pretrained_saes_directory

    directory = getattr(pretrained_saes_directory, _DIRECTORY_FUNCTION)
    own = getattr(directory, "original", directory)()
    for name, release in releases.items():
        if name in own and not is_plugin_lookup(own[name]):
            raise ValueError(f"{where}: {_collision_message(release)}")


def to_lookup(release: Release) -> Any:
    """The SAELens directory entry of a release, as SAELens builds one from its YAML (same
    defaults: variance explained 1.0, L0 0.0), with the vision metadata for the converters."""
    vision = {
        sae.path: {"model_name": release.model, **sae.metadata.to_dict()} for sae in release.saes
    }
    from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup

    lookup = PretrainedSAELookup(
        release=release.name,
        repo_id=release.repo_id,
        model=release.model,
        conversion_func=release.conversion_func,
        saes_map={sae.id: sae.path for sae in release.saes},
        expected_var_explained={
            sae.id: 1.0 if sae.variance_explained is None else sae.variance_explained
            for sae in release.saes
        },
        expected_l0={sae.id: 0.0 if sae.l0 is None else sae.l0 for sae in release.saes},
        neuronpedia_id={sae.id: sae.neuronpedia for sae in release.saes},
        norm_scaling_factor={
            sae.id: sae.norm_scaling_factor
            for sae in release.saes
            if sae.norm_scaling_factor is not None
        },
        config_overrides={**release.config_overrides, VISION_METADATA_KEY: vision},
    )
    _PLUGIN_LOOKUPS[id(lookup)] = lookup
    return lookup


def _register(table: dict[str, Any], additions: Mapping[str, Any]) -> None:
    for name, function in additions.items():
        present = table.get(name)
        if present is not None and present is not function:
            raise ValueError(
                f"SAELens already has a conversion function named {name!r} "
                f"({getattr(present, '__module__', '?')}); sae_vlm_plugin cannot register its own"
            )
        table[name] = function


def _collision_message(release: Release) -> str:
    return (
        f"release {release.name!r} (from {release.source}) has the name of one of SAELens' own "
        "pretrained releases; sae_vlm_plugin refuses to shadow it - rename the release"
    )
