"""The ``sae-vlm`` command. Each subcommand parses its arguments here and calls the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sae_vlm_plugin import __version__


def _cmd_env(args: argparse.Namespace) -> int:
    from sae_vlm_plugin.environment import environment_report

    report = environment_report()
    width = max(map(len, report))
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sae-vlm",
        description="Sparse autoencoders for vision and vision-language models "
        "(SAELens / nnsight / SAEDashboard plugin).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    env = commands.add_parser("env", help="print library versions and the device, for bug reports")
    env.set_defaults(handler=_cmd_env)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
