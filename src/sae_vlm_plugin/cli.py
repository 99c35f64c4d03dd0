"""The ``sae-vlm`` entry point: it collects every package's ``commands.py`` and runs one.

Each ``commands.py`` has ``add_commands(subparsers)``; a handler returns the exit status, and a
user's mistake (``USER_ERRORS``) prints one line, ``sae-vlm COMMAND: error: MESSAGE``, and exits
2, as argparse does for a bad flag.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
from collections.abc import Iterator, Sequence

from sae_vlm_plugin._version import __version__
from sae_vlm_plugin.command_line import check_arguments

COMMAND_MODULES = (
    "sae_vlm_plugin.commands",
    "sae_vlm_plugin.families.commands",
    "sae_vlm_plugin.cache.commands",
    "sae_vlm_plugin.training.commands",
    "sae_vlm_plugin.metrics.commands",
    "sae_vlm_plugin.dashboard.commands",
    "sae_vlm_plugin.steering.commands",
    "sae_vlm_plugin.naming.commands",
    "sae_vlm_plugin.pretrained.commands",
    "sae_vlm_plugin.demo.commands",
)
"""The packages' command modules, in the order ``sae-vlm --help`` lists their commands."""

USER_ERRORS = (ValueError, OSError, FloatingPointError)
"""What a user's mistake raises (a bad value; a missing, existing or unreachable file or model;
a training run diverged by its settings, ``training.job.TrainingDivergedError``): one line,
exit 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sae-vlm",
        description="Sparse autoencoders for vision and vision-language models "
        "(SAELens / nnsight / SAEDashboard plugin).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(commands)
    return parser


@contextlib.contextmanager
def _logging_to_stderr() -> Iterator[None]:
    """While a command runs, the package's log records, INFO and up, go to ``sys.stderr`` as
    bare lines (other libraries' logging is left as it is)."""
    logger = logging.getLogger("sae_vlm_plugin")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand. A user error prints ``sae-vlm COMMAND: error: MESSAGE`` and returns 2,
    as argparse does for bad flags; ``--debug`` shows the traceback instead. The library's log
    records (a count of skipped images, a server's address) go to stderr."""
    args = build_parser().parse_args(argv)
    try:
        check_arguments(args)  # before any command imports torch or SAELens
        with _logging_to_stderr():
            return int(args.handler(args))
    except USER_ERRORS as error:
        if args.debug:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"sae-vlm {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
