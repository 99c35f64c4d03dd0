"""The SAEs of a sweep, from a sweep file or from presets; each trains in ``<root>/<name>``.

A sweep file (YAML, read with ``safe_load``, or JSON) holds the settings all SAEs share and
each SAE's own::

    checkpoint_path: runs/table1-l22  # optional (else the command's --run-dir); or run_dir
    shared:                           # any VisionSAERunnerConfig setting, any spelling
      cached_activations_path: cache/clip-l22
      hook_name: blocks.22.hook_resid_post
    saes:                             # name -> that SAE's settings (presets allowed)
      batchtopk-x8: {architecture: paper_batchtopk, expansion_factor: 8}
      matryoshka-x8: {preset: clip-l14-336-l22-cls-matryoshka-x8}

A later layer's setting replaces an earlier one's of the same concept in whatever spelling
(``config_names.merge_settings``): shared, then the SAE's own, then the command's overrides.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

from sae_vlm_plugin.training.config_names import merge_settings
from sae_vlm_plugin.training.presets import list_presets, preset_config
from sae_vlm_plugin.training.runner_config import VisionSAERunnerConfig, flat_config, read_mapping

SWEEP_FILE_KEYS = ("checkpoint_path", "run_dir", "shared", "saes")


def sweep_from_presets(
    patterns: list[str], run_dir: str, **overrides: Any
) -> list[VisionSAERunnerConfig]:
    """One config per preset matching any of ``patterns`` (shell-style, e.g.
    ``clip-l14-336-l22-*``: the twelve Table 1 SAEs of block 22), trained in
    ``run_dir/<preset>`` (their ``checkpoint_path``) with ``overrides`` applied to all."""
    names = list(list_presets())
    chosen = [name for name in names if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    unmatched = [p for p in patterns if not fnmatch.filter(names, p)]
    if unmatched:
        raise ValueError(
            f"no preset matches {', '.join(map(repr, unmatched))}; list them with "
            "`sae-vlm train --list-presets`"
        )
    given = flat_config(overrides)
    return [
        preset_config(name, **merge_settings(given, {"checkpoint_path": str(Path(run_dir, name))}))
        for name in chosen
    ]


def sweep_from_file(
    path: str | Path, run_dir: str | None = None, **overrides: Any
) -> list[VisionSAERunnerConfig]:
    """The SAEs of the sweep file at ``path`` (format in the module docstring); ``overrides``
    apply to every SAE, last; ``run_dir`` replaces the file's ``checkpoint_path``."""
    spec = read_mapping(path, f"sweep keys ({', '.join(SWEEP_FILE_KEYS)})")
    unknown = sorted(set(spec) - set(SWEEP_FILE_KEYS))
    if unknown:
        raise ValueError(
            f"{path}: unknown sweep keys {unknown}; valid: {', '.join(SWEEP_FILE_KEYS)}"
        )
    saes = spec.get("saes")
    if not isinstance(saes, dict) or not saes:
        raise ValueError(f"{path}: 'saes' must map each SAE's name to its settings")
    if "checkpoint_path" in spec and "run_dir" in spec:
        raise ValueError(f"{path}: checkpoint_path and run_dir name the same setting: give one")
    root = run_dir or spec.get("checkpoint_path", spec.get("run_dir"))
    if root is None:
        raise ValueError(f"{path}: give checkpoint_path in the file or --run-dir")
    shared = _settings(path, "shared", spec.get("shared"))
    configs = []
    for name, own in saes.items():
        _check_sae_name(path, name)
        own = _settings(path, f"SAE {name!r}", own)
        try:
            layers = [flat_config(layer) for layer in (shared, own, overrides)]
            values = merge_settings(*layers, {"checkpoint_path": str(Path(root) / name)})
            configs.append(_sae_config(values))
        except ValueError as error:
            raise ValueError(f"{path}: SAE {name!r}: {error}") from error
    return configs


def _settings(path: str | Path, where: str, value: Any) -> dict[str, Any]:
    """The settings mapping at ``where`` in a sweep file (empty if left blank)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(
            f"{path}: {where} must map config keys to values, got {type(value).__name__} {value!r}"
        )
    return value


def _sae_config(values: dict[str, Any]) -> VisionSAERunnerConfig:
    """One SAE's config: its ``preset`` (if named) with the other values applied."""
    preset = values.pop("preset", None)
    if preset is not None:
        return preset_config(preset, **values)
    return VisionSAERunnerConfig(**values)


def _check_sae_name(path: str | Path, name: Any) -> None:
    """Refuse a name that is not one plain directory name: each SAE trains in
    ``<root>/<name>``, and ``../x``, ``/abs`` or ``a/b`` would put it elsewhere."""
    separators = ("/", "\\")
    plain = isinstance(name, str) and name not in ("", ".", "..")
    if not plain or any(sep in name for sep in separators):
        raise ValueError(
            f"{path}: SAE name {name!r} must be a plain directory name (no '/', '\\', '..' "
            "or absolute path): each SAE trains in CHECKPOINT_PATH/<name>"
        )
