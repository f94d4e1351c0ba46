"""What every `pocketlm` command module shares: the default-subcommand group and the output console.

Light on purpose (typer and rich only): `pocketlm --help` imports every command module, so none may
import torch or transformers before its command runs.
"""

from __future__ import annotations

import click
from rich.console import Console
from typer.core import TyperGroup

WHOLE_WIDTH = 10_000  # columns of a console that is not a terminal: wider than any table


class RunByDefault(TyperGroup):
    """A command group whose first argument, unless it names a subcommand, goes to `run`:
    `pocketlm profile MODEL --dtype int4` means `pocketlm profile run MODEL --dtype int4`."""

    default_command = "run"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


def output_console() -> Console:
    """A rich console for results. On a terminal it fits the window; written to a file or a pipe,
    tables print whole (no cell cut to '…' at 80 columns)."""
    console = Console()
    return console if console.is_terminal else Console(width=WHOLE_WIDTH)
