"""``sae-vlm env``: the commands of the ground floor's modules (library versions, device)."""

from __future__ import annotations

import argparse
from typing import Any

from sae_vlm_plugin.command_line import add_command, print_table


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    """Add ``env`` to the ``sae-vlm`` subcommands."""
    add_command(
        commands, "env", _cmd_env, help="print library versions and the device, for bug reports"
    )


def _cmd_env(args: argparse.Namespace) -> int:
    from sae_vlm_plugin.environment import environment_report

    print_table(environment_report())
    return 0
