"""The engines `pocketlm profile` measures, behind one small interface.

A backend `check`s a setting in the parent process (fail fast, before any subprocess starts) and
`measure`s it in the fresh worker process: prefill and decode timings, memory, bytes on disk. The
worker adds what every backend shares (model info, system, wall time).
"""

from __future__ import annotations

from typing import Protocol

from pocketlm.profile.llamacpp_backend import LlamaCppBackend
from pocketlm.profile.setting import ProfileError, Setting
from pocketlm.profile.torch_backend import TorchBackend
from pocketlm.runtime import ModelRef


class Backend(Protocol):
    name: str

    def check(self, ref: ModelRef, setting: Setting) -> None:
        """Raise ProfileError, naming the fix, for a setting this backend cannot run."""

    def measure(self, ref: ModelRef, setting: Setting) -> dict:
        """Measure `setting` in this process; keys as in docs/profile.md (prefill, decode, memory, ...)."""


BACKENDS: dict[str, Backend] = {b.name: b for b in (TorchBackend(), LlamaCppBackend())}


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ProfileError(f"unknown backend {name!r}; choose from {tuple(BACKENDS)}")
    return BACKENDS[name]
