"""Lazy package exports (PEP 562), so that importing a package stays light until its API is used.

`pocketlm --help` imports every command module, and so every package they live in; a package whose
`__init__` imports torch would make each `--help` pay for it.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` importing each public name from its submodule (`where[name]`,
    relative to `package`) on first use."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(where[name], package), name)

    return __getattr__
