"""The `pocketlm` command: a thin layer over the Python API.

Each module in COMMAND_MODULES has `register(app)`, which adds its commands to the root app; this
file only wires them together. Command modules import torch, transformers and the capability code
inside their command bodies, so `pocketlm --help` and every `--help` answer at once.
"""

from __future__ import annotations

import importlib
from typing import Sequence

import typer

# in the order `--help` lists them; a new capability adds its cli module here
COMMAND_MODULES = ("pocketlm.runtime.cli", "pocketlm.survey.cli", "pocketlm.data.cli", "pocketlm.train.cli",
                   "pocketlm.evaluate.cli", "pocketlm.profile.cli", "pocketlm.compress.cli", "pocketlm.demo",
                   "pocketlm.compress.structured.cli")


def build_app(modules: Sequence[str] = COMMAND_MODULES) -> typer.Typer:
    """The root app with every module's commands; an import error in a module propagates (never skipped)."""
    app = typer.Typer(help="pocketlm: pick, build, measure and shrink small language models, offline.",
                      no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
    for name in modules:
        importlib.import_module(name).register(app)
    return app


app = build_app()


def main() -> None:
    """Entry point: user errors (bad input) print one line; POCKETLM_DEBUG=1 shows the traceback."""
    import os
    import sys

    try:
        app(standalone_mode=True)
    except (ValueError, FileNotFoundError, KeyError) as e:
        if os.environ.get("POCKETLM_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
