"""``sae-vlm extract`` (activations into a resumable cache) and ``sae-vlm cache verify`` (check
one before training on it)."""

from __future__ import annotations

import argparse
from typing import Any

from sae_vlm_plugin.command_line import (
    add_command,
    add_image_arguments,
    image_options,
    non_negative_int,
    positive_int,
)


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    """Add ``extract`` and ``cache`` (with its ``verify`` action) to the ``sae-vlm`` subcommands."""
    _add_extract(commands)
    cache = commands.add_parser(
        "cache",
        help="inspect an activation cache (sae-vlm extract's output)",
        description="Inspect an activation cache written by `sae-vlm extract`.",
    )
    actions = cache.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    verify = add_command(
        actions,
        "verify",
        _cmd_verify,
        help="check the shards against the manifest; exit 2 listing the problems",
        description="Check every shard of an activation cache against its cache.json, from the "
        "files' headers: that it exists, holds the recorded rows of the recorded width and "
        "dtype, is a sound safetensors file of this cache. Prints a summary per hook; exits 2 "
        "listing the problems (an unfinished extraction is one).",
    )
    verify.add_argument("cache_dir", metavar="path", help="the cache directory")


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


def _add_extract(commands: argparse._SubParsersAction[Any]) -> None:
    extract = add_command(
        commands,
        "extract",
        _cmd_extract,
        help="stream activations of a hook into a resumable on-disk cache",
        description="Extract activations into a cache directory that SAE training reads. "
        "Re-running the same command resumes an interrupted extraction.",
    )
    extract.add_argument(
        "--model", required=True, help="hub id, local path, open_clip:ARCH/TAG or hf-hub:ORG/REPO"
    )
    extract.add_argument("--family", help="force a model family (see `sae-vlm families`)")
    extract.add_argument(
        "--hook",
        required=True,
        action="append",
        help="canonical hook name, e.g. blocks.22.hook_resid_post (repeatable)",
    )
    extract.add_argument(
        "--tokens",
        default="cls",
        help="cls | patches | all | mean | random_k | random_k+replacement (default: cls)",
    )
    extract.add_argument(
        "--k", type=positive_int, default=2, help="tokens per image for random_k (default: 2)"
    )
    extract.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the random_k draw (default: 0)"
    )
    add_image_arguments(extract, required=True, stream=True)
    extract.add_argument(
        "--out", required=True, help="cache directory (created; resumed if it exists)"
    )
    extract.add_argument("--batch-size", type=positive_int, default=64)
    extract.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    extract.add_argument("--images-per-shard", type=positive_int, default=256)
    extract.add_argument(
        "--skip-unreadable", action="store_true", help="skip corrupt images and report the count"
    )
    extract.add_argument(
        "--num-workers",
        "--workers",
        dest="workers",
        type=non_negative_int,
        default=0,
        help="DataLoader worker processes that decode and preprocess images (default: 0)",
    )
    extract.add_argument("--device", help="e.g. cuda, cuda:1, cpu (default: where the model loads)")


def _cmd_extract(args: argparse.Namespace) -> int:
    from sae_vlm_plugin.cache import extract_to_cache
    from sae_vlm_plugin.distributed import DataParallel, process_group_from_environment
    from sae_vlm_plugin.model import VisionModel

    with process_group_from_environment(args.device) as device:  # torchrun: one rank per device
        model = VisionModel(args.model, family=args.family, device=device)
        cache = extract_to_cache(
            model,
            args.images,
            args.hook,
            args.out,
            tokens=args.tokens,
            batch_size=args.batch_size,
            k=args.k,
            seed=args.seed,
            dtype=args.dtype,
            images_per_shard=args.images_per_shard,
            skip_unreadable=args.skip_unreadable,
            num_workers=args.workers,
            stream=args.stream,
            **image_options(args),
        )
        is_main = DataParallel.current().is_main
    if is_main:
        for hook in cache.hooks:
            print(f"{hook}: {cache.n_rows(hook)} rows x {cache.d_in(hook)} -> {cache.path / hook}")
    return 0
