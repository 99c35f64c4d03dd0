"""``sae-vlm cache verify``: check an activation cache before training on it."""

from __future__ import annotations

import argparse


def add_cache_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``cache`` (with its ``verify`` action) to the ``sae-vlm`` subcommands."""
    cache = commands.add_parser(
        "cache",
        help="inspect an activation cache (sae-vlm extract's output)",
        description="Inspect an activation cache written by `sae-vlm extract`.",
    )
    actions = cache.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    verify = actions.add_parser(
        "verify",
        help="check the shards against the manifest; exit 2 listing the problems",
        description="Check every shard of an activation cache against its cache.json, from the "
        "files' headers: that it exists, holds the recorded rows of the recorded width and "
        "dtype, is a sound safetensors file of this cache. Prints a summary per hook; exits 2 "
        "listing the problems (an unfinished extraction is one).",
    )
    verify.add_argument("cache_dir", metavar="path", help="the cache directory")
    verify.set_defaults(handler=_cmd_verify)


def _cmd_verify(args: argparse.Namespace) -> int:
    from sae_vlm_plugin.cache import verify_cache

    report = verify_cache(args.cache_dir)
    print(f"{report.path}: {'complete' if report.complete else 'incomplete'}")
    for summary in report.hooks:
        print(f"  {summary.describe()}")
    if not report.ok:
        raise ValueError(
            f"{len(report.problems)} problem(s) in {report.path}: " + "; ".join(report.problems)
        )
    print("ok")
    return 0
