"""What every package's ``commands.py`` shares: ``add_command`` (a subcommand and its handler),
``print_table``, the argument types, and the checks that run before any command imports torch
or SAELens.

A handler takes the parsed ``argparse.Namespace`` and returns the exit status; a user's mistake
raises ``ValueError`` / ``OSError``, which ``sae-vlm`` prints as one line and exits 2 with
(``cli.main``). A mistyped number, a missing file or a misspelt device is said in a fraction
of a second, not after the seconds that importing the libraries (and loading a model) take:
the argparse types reject a bad number as argparse rejects a bad flag; ``check_arguments``
looks at the arguments every command shares by name (``--device``, ``--images``, ``--sae``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sae_vlm_plugin.devices import check_device, check_device_name

Handler = Callable[[argparse.Namespace], int]
"""A subcommand: parsed arguments in, exit status out."""


def add_command(
    commands: argparse._SubParsersAction[Any],
    name: str,
    handler: Handler,
    *,
    help: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """The parser of subcommand ``name`` (its one-line ``help`` also describes it unless a
    longer ``description`` is given), which runs ``handler``."""
    parser = commands.add_parser(name, help=help, description=description or help)
    parser.set_defaults(handler=handler)
    return parser


def print_table(rows: dict[str, str]) -> None:
    """Two aligned columns: key, value."""
    width = max(map(len, rows), default=0)
    for key, value in rows.items():
        print(f"{key:<{width}}  {value}")


def looks_like_path(spec: str) -> bool:
    """Whether an ``--sae`` value names a directory rather than a release: it exists, or it is
    written as a path (``./``, ``../``, ``/``, ``~``), which no release name is."""
    return Path(spec).expanduser().exists() or spec.startswith((".", "/", "~"))


def _number(convert: Callable[[str], float], low: float, what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = _number(int, 1, "an integer >= 1")
non_negative_int = _number(int, 0, "an integer >= 0")
non_negative_float = _number(float, 0, "a number >= 0")


def port_number(text: str) -> int:
    """A TCP port, 0 (any free one) to 65535."""
    port = int(non_negative_int(text))
    if port > 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0..65535, got {text!r}")
    return port


def parse_latents(text: str) -> tuple[range, ...]:
    """``"0-3,7"`` -> ``(range(0, 4), range(7, 8))``: the ranges only, so that a huge range is
    refused against the SAE's width (``latent_ids``) before any list of it exists."""
    ranges = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not (first.isdigit() and (last.isdigit() or not dash)):
            raise argparse.ArgumentTypeError(f"bad latent list {text!r}; e.g. 0-99,512")
        ranges.append(range(int(first), int(last or first) + 1))
        if not ranges[-1]:
            raise argparse.ArgumentTypeError(f"bad latent range {part.strip()!r}: it is empty")
    return tuple(ranges)


def latent_ids(ranges: tuple[range, ...], d_sae: int) -> list[int]:
    """The latents of ``parse_latents``' ranges, after checking every one is below ``d_sae``."""
    for latents in ranges:
        if latents[-1] >= d_sae:
            raise ValueError(
                f"latent {latents[-1]} is out of range; valid latents are 0..{d_sae - 1}"
            )
    return [latent for latents in ranges for latent in latents]


def add_image_arguments(
    parser: argparse.ArgumentParser,
    *,
    required: bool = False,
    help: str | None = None,
    stream: bool = False,
) -> None:
    """``--images`` and the options that say how to read it: ``--split``, ``--image-column``,
    ``--label-column`` and, for a command that reads streams (``stream``), ``--stream``
    (``image_options`` collects them for ``open_images``)."""
    parser.add_argument(
        "--images",
        required=required,
        help=help
        or "images: a folder (tree or flat), webdataset .tar shards (a .tar, a brace pattern "
        "shards/{00000..00009}.tar or a folder of them), hf:NAME (a hub dataset), a "
        "save_to_disk folder, parquet shards, or a .csv/.tsv/.txt/.parquet list of paths",
    )
    parser.add_argument(
        "--split",
        help="the split to read (a folder's train/ or val/, a DatasetDict's or hub dataset's)",
    )
    parser.add_argument(
        "--image-column",
        help="the column holding the images (or paths, in a path list); webdataset: the image "
        "member's extension (default: found by type)",
    )
    parser.add_argument(
        "--label-column",
        help="the column holding the labels; webdataset: a member (cls) or .json field "
        "(default: label, labels, class, cls, category)",
    )
    if stream:
        parser.add_argument(
            "--stream",
            action="store_true",
            help="read an HF dataset (hf:NAME, parquet, save_to_disk) as a stream, in order, "
            "instead of loading it (resumes by skipping the rows already extracted)",
        )


def image_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``open_images`` that ``add_image_arguments`` added."""
    return {
        "split": getattr(args, "split", None),
        "image_column": getattr(args, "image_column", None),
        "label_column": getattr(args, "label_column", None),
    }


def opened_images(args: argparse.Namespace) -> Any:
    """The ``ImageSource`` that ``--images`` and its options name (None without ``--images``);
    imports the image layer only when called (from a command's handler)."""
    if getattr(args, "images", None) is None:
        return None
    from sae_vlm_plugin.images import open_image_source

    return open_image_source(args.images, **image_options(args))


def images_exist(spec: str) -> bool:
    """Whether an ``--images`` value can name something: it exists, or it is written as a
    hub dataset (``hf:NAME``), a webdataset URL, a brace pattern of shards or a glob, whose parts are checked
    when the images are opened."""
    return (
        spec.startswith(("hf:", "pipe:", "http://", "https://", "s3://", "gs://", "file:"))
        or Path(spec).expanduser().exists()
        or any(mark in spec for mark in ("{", "*", "?", "["))
    )


PATH_ARGUMENTS = {
    "images": "image folder",
    "pairs": "pairs file",
    "config": "config file",
    "cache_path": "activation cache",
    "cache_dir": "activation cache",
}
"""Arguments (by their ``args`` name) that name a file or folder that must exist."""


def check_arguments(args: argparse.Namespace) -> None:
    """ValueError / FileNotFoundError for what is wrong with the shared arguments: a device
    not spelled as one, a path in ``PATH_ARGUMENTS`` or an ``--sae`` directory that does not
    exist, then a device this machine lacks (the one check that imports torch)."""
    device = getattr(args, "device", None)
    check_device_name(device)
    for name, what in PATH_ARGUMENTS.items():
        value = getattr(args, name, None)
        exists = images_exist if name == "images" else lambda v: Path(v).expanduser().exists()
        if isinstance(value, str) and not exists(value):
            flag = {"cache_path": "--cache", "cache_dir": "cache"}.get(name, "--" + name)
            raise FileNotFoundError(f"{flag}: no such {what}: {value}")
    sae = getattr(args, "sae", None)
    if isinstance(sae, str) and looks_like_path(sae) and not Path(sae).expanduser().is_dir():
        raise FileNotFoundError(f"no such SAE directory: {sae}")
    check_device(device)  # whether this machine has it: imports torch, so it comes last
