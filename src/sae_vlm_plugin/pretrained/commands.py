"""``sae-vlm pretrained list | validate | export``: the registry from the command line.

``add_pretrained_commands(subparsers)`` adds the ``pretrained`` command to the ``sae-vlm``
parser; each action sets ``handler`` (``args -> exit code``) like the other subcommands.
"""

from __future__ import annotations

import argparse
from typing import Any

from sae_vlm_plugin.command_line import add_command
from sae_vlm_plugin.pretrained.sae_argument import add_registry_option


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    """Add ``pretrained`` (with actions ``list``, ``validate``, ``export``) to ``commands``."""
    pretrained = commands.add_parser(
        "pretrained",
        help="list, validate and export pretrained SAEs",
        description="Pretrained SAEs for vision models: the plugin's releases (also visible to "
        "SAELens' SAE.from_pretrained) and your own registry files.",
    )
    actions = pretrained.add_subparsers(dest="pretrained_action", required=True, metavar="ACTION")

    listing = add_command(actions, "list", _cmd_list, help="releases, or the SAEs of one release")
    listing.add_argument("release", nargs="?", help="show this release's SAEs")
    add_registry_option(listing)

    validate = add_command(
        actions,
        "validate",
        _cmd_validate,
        help="check registry YAML files against the schema and SAELens' names",
    )
    validate.add_argument("files", nargs="+", help="registry YAML files")

    export = add_command(
        actions,
        "export",
        _cmd_export,
        help="write a registered SAE in SAELens format (cfg.json + sae_weights.safetensors)",
        description="Load an SAE through its converter and save it for SAE.load_from_disk, with "
        "its vision metadata in cfg.json.",
    )
    export.add_argument("release")
    export.add_argument("sae_id")
    export.add_argument("out", help="output folder")
    export.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    add_registry_option(export)


def _cmd_list(args: argparse.Namespace) -> int:
    from sae_vlm_plugin.pretrained.registry import get_release, list_releases, register_releases

    for file in args.registry:
        register_releases(file)
    if args.release is None:
        for name, release in list_releases().items():
            flag = "" if release.verified else "  [unverified]"
            print(f"{name}  {release.model}  {len(release.saes)} SAEs{flag}")
        return 0
    release = get_release(args.release)
    print(f"{release.name}: {release.model} from {release.repo_id} ({release.conversion_func})")
    if release.note:
        print(f"note: {release.note}")
    for sae in release.saes:
        meta = sae.metadata
        width = f"x{meta.expansion_factor:g}" if meta.expansion_factor is not None else "-"
        print(  # "?": left to the checkpoint, derived when the SAE loads
            f"  {sae.id}  {meta.hook_name or '?'}  tokens={meta.tokens or '?'}  "
            f"{meta.training_architecture or '?'} k={meta.k or '?'}  {width}"
        )
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from sae_vlm_plugin.pretrained.registry import list_releases, register_releases

    for file in args.files:
        names = register_releases(file)
        n_saes = sum(len(list_releases()[name].saes) for name in names)
        print(f"{file}: OK, {len(names)} releases, {n_saes} SAEs")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from sae_vlm_plugin.pretrained.loading import export_sae
    from sae_vlm_plugin.pretrained.registry import register_releases

    for file in args.registry:
        register_releases(file)
    out = export_sae(args.release, args.sae_id, args.out, dtype=args.dtype)
    print(f"{args.release} / {args.sae_id} -> {out}")
    return 0
