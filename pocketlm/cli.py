"""The `pocketlm` command: a thin layer over the Python API.

Each capability folder owns a `cli.py` with `register(app)`, which adds its commands to the root
app; this file only wires them together.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    help="pocketlm: pick, build, measure and shrink small language models, offline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# capability folders whose cli.register(app) adds commands, in the order `--help` lists them
AREAS = ("runtime", "survey", "data", "train", "evaluate", "profile", "compress", "export", "demo")


def _register_all() -> None:
    for area in AREAS:
        module_name = f"pocketlm.{area}.cli" if area != "demo" else "pocketlm.demo"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name:  # area not built yet
                continue
            raise
        module.register(app)


_register_all()


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
