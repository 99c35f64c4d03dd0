"""The shape of an activation cache's ``cache.json``, checked before anything reads a field of it.

A hand-edited or damaged manifest (a count of NaN, a missing ``hooks`` table, a list where a
mapping belongs) would otherwise surface as a KeyError or TypeError deep inside verification or
training; ``check_manifest`` names the file and the field instead.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn


def _is_count(value: Any, low: int) -> bool:
    return type(value) is int and value >= low


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


SETTINGS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model": (_is_text, "a string"),
    "family": (_is_text, "a string"),
    "hooks": (
        lambda v: isinstance(v, list) and bool(v) and all(map(_is_text, v)),
        "a non-empty list of hook names",
    ),
    "tokens": (_is_text, "a string"),
    "dtype": (lambda v: v in ("float32", "float16", "bfloat16"), "float32, float16 or bfloat16"),
    "images_per_shard": (lambda v: _is_count(v, 1), "an integer >= 1"),
    "n_images": (lambda v: _is_count(v, 0), "an integer >= 0"),
    "image_ids_sha256": (_is_text, "a string"),
}
"""Each field of ``settings``: its test and what it must be."""


def check_manifest(manifest: dict[str, Any], path: Path) -> None:
    """ValueError naming ``path`` and the field, unless ``manifest`` has every field the cache
    reads, of the right type: ``version``, ``settings`` (``SETTINGS``), ``hooks`` (a ``d_in``
    per hook of the settings), ``complete`` and, if present, ``shard_rows`` (row counts)."""

    def refuse(field: str, expected: str, value: Any) -> NoReturn:
        raise ValueError(f"{path}: {field} must be {expected}, got {value!r}")

    if not _is_count(manifest.get("version"), 1):
        refuse("version", "an integer >= 1", manifest.get("version"))
    settings = manifest.get("settings")
    if not isinstance(settings, dict):
        refuse("settings", "a mapping", settings)
    for name, (test, expected) in SETTINGS.items():
        if not test(settings.get(name)):
            refuse(f"settings.{name}", expected, settings.get(name))
    hooks = manifest.get("hooks")
    if not isinstance(hooks, dict):
        refuse("hooks", "a mapping of hook names to {d_in: ...}", hooks)
    for hook in settings["hooks"]:
        entry = hooks.get(hook)
        d_in = entry.get("d_in") if isinstance(entry, dict) else None
        if not _is_count(d_in, 1):
            refuse(f"hooks.{hook}.d_in", "an integer >= 1", d_in)
    if not isinstance(manifest.get("complete"), bool):
        refuse("complete", "true or false", manifest.get("complete"))
    rows = manifest.get("shard_rows", {})
    if not isinstance(rows, dict) or not all(
        isinstance(counts, list) and all(_is_count(n, 0) for n in counts)
        for counts in rows.values()
    ):
        refuse("shard_rows", "a mapping of hook names to lists of row counts", rows)
