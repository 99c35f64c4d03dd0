"""Checks of the ``sae-vlm`` arguments that run before any command imports torch or SAELens.

A mistyped number, a missing file or a misspelt device is then said in a fraction of a second,
not after the seconds that importing the libraries (and loading a model) take. The argparse
types reject a bad number as argparse rejects a bad flag; ``check_arguments`` looks at the
arguments every command shares by name (``--device``, ``--images``, ``--sae`` ...).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from sae_vlm_plugin.devices import check_device, check_device_name


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
        if isinstance(value, str) and not Path(value).expanduser().exists():
            flag = {"cache_path": "--cache", "cache_dir": "cache"}.get(name, "--" + name)
            raise FileNotFoundError(f"{flag}: no such {what}: {value}")
    sae = getattr(args, "sae", None)
    if isinstance(sae, str):
        from sae_vlm_plugin.pretrained.sae_argument import looks_like_path

        if looks_like_path(sae) and not Path(sae).expanduser().is_dir():
            raise FileNotFoundError(f"no such SAE directory: {sae}")
    check_device(device)  # whether this machine has it: imports torch, so it comes last
