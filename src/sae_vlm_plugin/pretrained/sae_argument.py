"""The ``--sae`` argument, one syntax for every command that takes an SAE.

``--sae`` is an SAE directory (SAELens format, e.g. ``sae-vlm train``'s ``RUN/final``),
``RELEASE:SAE_ID`` or ``RELEASE/SAE_ID`` of the registry; ``--registry FILE`` registers a user's
own release file first, and ``--force`` accepts an SAE whose metadata names another model. The
parser side imports nothing heavy, so ``sae-vlm --help`` stays fast; loading imports SAELens.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sae_vlm_plugin.command_line import looks_like_path

SAE_HELP = "SAE directory (e.g. RUN/final), RELEASE:SAE_ID or RELEASE/SAE_ID"


def add_sae_arguments(parser: argparse.ArgumentParser) -> None:
    """``--sae`` (required), ``--registry FILE`` and ``--force`` on a subcommand's parser."""
    parser.add_argument("--sae", required=True, help=SAE_HELP)
    add_registry_option(parser)
    parser.add_argument(
        "--force",
        action="store_true",
        help="use the SAE even on a model other than the one its metadata names",
    )


def add_registry_option(parser: argparse.ArgumentParser) -> None:
    """``--registry FILE`` (repeatable): a user's own release YAML, registered before use."""
    parser.add_argument(
        "--registry",
        action="append",
        default=[],
        metavar="FILE",
        help="also register the releases of this YAML file (repeatable)",
    )


def parse_sae_spec(spec: str) -> Path | tuple[str, str]:
    """``--sae`` as a directory or as ``(release, sae_id)``.

    A spec that is neither an existing directory nor a registered ``RELEASE:SAE_ID`` /
    ``RELEASE/SAE_ID`` raises FileNotFoundError saying both: ``runs/nonexist`` is far more
    likely a mistyped directory than a release called ``runs``.
    """
    from sae_vlm_plugin.pretrained.registry import list_releases
    from sae_vlm_plugin.pretrained.schema import closest_first

    if looks_like_path(spec):
        return Path(spec).expanduser()
    releases = list_releases()
    splits = [spec.partition(sep) for sep in (":", "/") if sep in spec]
    for release, _, sae_id in splits:
        if release in releases and sae_id:
            return release, sae_id
    named = splits[0][0] if splits else spec
    raise FileNotFoundError(
        f"no such SAE directory: {spec}; nor is it RELEASE:SAE_ID of a registered release "
        f"({named!r} is not one; registered, closest first: "
        f"{', '.join(closest_first(named, list(releases)))}; --registry FILE adds your own)"
    )


def load_sae_argument(spec: str, device: str, registry_files: Sequence[str] = ()) -> Any:
    """The SAELens SAE that ``--sae spec`` names, after registering ``registry_files``."""
    from sae_vlm_plugin.pretrained.loading import load_sae
    from sae_vlm_plugin.pretrained.registry import register_releases

    for file in registry_files:
        register_releases(file)
    where = parse_sae_spec(spec)
    if isinstance(where, Path):
        return load_sae(where, device=device).sae
    return load_sae(*where, device=device).sae


def model_name_argument(given: str | None, sae: Any) -> str:
    """``--model`` if given, else the model the SAE's metadata names; ValueError if neither."""
    name = given or getattr(sae.cfg.metadata, "model_name", None)
    if not name:
        raise ValueError("the SAE's metadata names no model; pass --model")
    return str(name)
