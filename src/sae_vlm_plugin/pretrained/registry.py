"""The releases the plugin knows: the shipped ``pretrained_yaml/*.yaml`` and users' own files.

``register_pretrained()`` is what ``import sae_vlm_plugin`` calls. It imports nothing: it asks to
be called back when SAELens is imported (at once if it already is), and only then parses the
shipped YAML files and connects them to SAELens (``sae_lens_bridge``). From then on
``SAE.from_pretrained(release, sae_id)``, ``SAE.from_pretrained_with_cfg_and_sparsity`` and
``get_pretrained_saes_directory()`` see every release registered here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

from sae_vlm_plugin._import_hooks import when_imported
from sae_vlm_plugin.pretrained.schema import (
    Release,
    closest_first,
    load_yaml_text,
    parse_releases,
)

SHIPPED_DIR = "pretrained_yaml"
"""Package-data folder of ``sae_vlm_plugin`` holding the shipped registry files."""

_RELEASES: dict[str, Release] = {}
_SHIPPED_LOADED = False


def register_pretrained() -> None:
    """Make the plugin's releases visible to SAELens: now if ``sae_lens`` is imported, else the
    moment it is. Idempotent and cheap (imports nothing; parses no file until SAELens loads)."""
    when_imported("sae_lens", connect_sae_lens)


def connect_sae_lens() -> None:
    """Load the shipped releases and install them into SAELens (imports SAELens). Idempotent.

    Raises ValueError if a shipped release has the name of one of SAELens' own releases."""
    from sae_vlm_plugin.pretrained import sae_lens_bridge

    _load_shipped()
    sae_lens_bridge.install(_registered)


def list_releases() -> dict[str, Release]:
    """Every registered release by name: the shipped ones, then the user's in order."""
    _load_shipped()
    return dict(_RELEASES)


def get_release(name: str) -> Release:
    """The release called ``name``; an unknown name raises, listing the valid ones closest first."""
    releases = list_releases()
    if name not in releases:
        raise ValueError(
            f"unknown release {name!r}; registered releases (closest first): "
            + ", ".join(closest_first(name, list(releases)))
        )
    return releases[name]


def register_releases(
    source: str | os.PathLike[str] | Mapping[str, Any], *, overwrite: bool = False
) -> list[str]:
    """Register the releases of a user's registry file and return their names.

    ``source`` is a path to a YAML file (``str`` without a newline, or ``PathLike``), YAML text
    (a ``str`` with a newline) or an already-parsed mapping. The file must follow
    ``schema.py``; relative local ``repo_id`` paths resolve against its folder. A name SAELens
    already uses is refused. Registering an identical release again is a no-op; a different
    release under a registered name raises unless ``overwrite=True``. Imports SAELens.
    """
    data, where, base_dir = _read(source)
    releases = parse_releases(data, where, base_dir)
    _load_shipped()
    for name, release in releases.items():
        existing = _RELEASES.get(name)
        if existing is not None and not overwrite and not _same(existing, release):
            raise ValueError(
                f"{where}: release {name!r} is already registered (from {existing.source}) with "
                "different content; rename it or pass overwrite=True"
            )
    connect_sae_lens()
    from sae_vlm_plugin.pretrained import sae_lens_bridge

    sae_lens_bridge.refuse_sae_lens_names(releases, where)
    _RELEASES.update(releases)
    return list(releases)


def _registered() -> Mapping[str, Release]:
    return _RELEASES


def _load_shipped() -> None:
    global _SHIPPED_LOADED
    if _SHIPPED_LOADED:
        return
    for file in sorted(files("sae_vlm_plugin").joinpath(SHIPPED_DIR).iterdir(), key=str):
        if file.name.endswith((".yaml", ".yml")):
            where = f"sae_vlm_plugin/{SHIPPED_DIR}/{file.name}"
            releases = parse_releases(load_yaml_text(file.read_text(), where), where, shipped=True)
            repeated = sorted(set(releases) & set(_RELEASES))
            if repeated:
                raise ValueError(f"{where}: releases defined in another shipped file: {repeated}")
            _RELEASES.update(releases)
    _SHIPPED_LOADED = True


def _read(source: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[Any, str, Path | None]:
    """(parsed data, name for messages, folder for relative paths) of a ``register_releases``
    source."""
    if isinstance(source, Mapping):
        return dict(source), "<mapping>", None
    if isinstance(source, os.PathLike) or "\n" not in source:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(
                f"no registry file {str(path)!r} (to register YAML text, pass a string with "
                "newlines; or pass a mapping)"
            )
        return load_yaml_text(path.read_text(), str(path)), str(path), path.resolve().parent
    return load_yaml_text(source, "<yaml text>"), "<yaml text>", None


def _same(a: Release, b: Release) -> bool:
    """Equal apart from where they were read from."""
    return dataclasses.replace(a, source=b.source) == b
