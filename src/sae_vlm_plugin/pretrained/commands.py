"""``sae-vlm pretrained list | validate | export`` and ``sae-vlm publish``: the registry from
the command line.

``add_pretrained_commands(subparsers)`` adds the ``pretrained`` and ``publish`` commands to the
``sae-vlm`` parser; each sets ``handler`` (``args -> exit code``) like the other subcommands.
"""

from __future__ import annotations

import argparse
from typing import Any

from sae_vlm_plugin.command_line import add_command
from sae_vlm_plugin.pretrained.sae_argument import add_registry_option


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    """Add ``pretrained`` (with actions ``list``, ``validate``, ``export``) and ``publish`` to
    ``commands``."""
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

    publish = add_command(
        commands,
        "publish",
        _cmd_publish,
        help="write trained SAEs as a release others load by name; upload with --repo-id",
        description="A hub-ready folder: each SAE in SAELens format, a model card with its "
        "metadata, MS / R^2 / L0 and plots, manifest.jsonl, and release.yaml, the registry "
        "entry that makes SAE.from_pretrained(RELEASE, SAE_ID) load them.",
    )
    publish.add_argument(
        "--sae", action="append", required=True, metavar="SAE_ID=DIR",
        help="an SAE directory (e.g. RUN/final) under its id; repeat for more",
    )  # fmt: skip
    publish.add_argument(
        "--eval", action="append", default=[], metavar="SAE_ID=DIR",
        help="the folder `sae-vlm evaluate --out` wrote for that SAE (metrics and plot)",
    )  # fmt: skip
    publish.add_argument("--release", required=True, help="the release name")
    publish.add_argument("--out", required=True, help="the folder to write")
    publish.add_argument("--repo-id", help="also upload to this hub model repo (ORG/NAME)")
    publish.add_argument("--private", action="store_true", help="create the hub repo private")


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


def _pairs(values: list[str], option: str) -> dict[str, str]:
    """``["ID=DIR", ...]`` as a dict; a malformed or repeated id raises naming it."""
    pairs: dict[str, str] = {}
    for value in values:
        key, sep, path = value.partition("=")
        if not sep or not key or not path:
            raise ValueError(f"{option} {value!r}: expected SAE_ID=DIR")
        if key in pairs:
            raise ValueError(f"{option}: SAE id {key!r} given twice")
        pairs[key] = path
    return pairs


def _cmd_publish(args: argparse.Namespace) -> int:
    from sae_vlm_plugin.pretrained.publish import publish_saes

    out = publish_saes(
        _pairs(args.sae, "--sae"),
        args.out,
        release=args.release,
        evaluations=_pairs(args.eval, "--eval"),
        repo_id=args.repo_id,
        private=args.private,
    )
    where = f" and https://huggingface.co/{args.repo_id}" if args.repo_id else ""
    print(f"{args.release}: {len(args.sae)} SAEs in {out}{where}")
    return 0
