"""``sae-vlm families``: the model families the plugin recognises."""

from __future__ import annotations

import argparse
from typing import Any

from sae_vlm_plugin.command_line import add_command, print_table


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    """Add ``families`` to the ``sae-vlm`` subcommands."""
    add_command(commands, "families", _cmd_families, help="list the supported model families")


def _cmd_families(args: argparse.Namespace) -> int:
    from sae_vlm_plugin.families.registry import list_families

    print_table(list_families())
    return 0
