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
                   "pocketlm.compress.structured.cli", "pocketlm.fit.cli", "pocketlm.insights.cli",
                   "pocketlm.compress.export_cli")


def build_app(modules: Sequence[str] = COMMAND_MODULES) -> typer.Typer:
    """The root app with every module's commands; an import error in a module propagates (never skipped)."""
    app = typer.Typer(help="pocketlm: pick, build, measure and shrink small language models, offline.",
                      no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
    for name in modules:
        importlib.import_module(name).register(app)
    return app


app = build_app()


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (a file, an option, the file system), never a pocketlm bug.

    Capability code raises ValueError subclasses naming the file or option (ConfigError, CheckpointError,
    DataError, TaskSpecError, ...); the libraries' own error types for unreadable files are here too, in
    case one escapes a boundary check. Anything else is a bug and keeps its traceback."""
    import pickle

    types: list[type[BaseException]] = [ValueError, KeyError, OSError, pickle.UnpicklingError]
    for module, name in (("safetensors", "SafetensorError"), ("huggingface_hub.errors", "StrictDataclassError"),
                         ("yaml", "YAMLError")):
        try:
            types.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(types)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: user errors (bad input) print one line; POCKETLM_DEBUG=1 shows the traceback."""
    import os
    import sys

    try:
        app(args=argv, standalone_mode=True)
    except user_error_types() as e:
        if os.environ.get("POCKETLM_DEBUG"):
            raise
        text = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {text}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
