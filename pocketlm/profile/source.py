"""Profile's view of the runtime layer: models are opened by `pocketlm.runtime`, errors become ProfileError."""

from __future__ import annotations

from pathlib import Path

from pocketlm.runtime import PRECISIONS as DTYPES
from pocketlm.runtime import ModelOpenError, ModelRef, open_model
from pocketlm.runtime import release_memory as malloc_trim
from pocketlm.runtime import resolve as _resolve

WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.gguf")
ModelSpec = ModelRef


class ProfileError(ValueError):
    """A profiling request that cannot run; the message names the problem and the fix."""


def resolve(text: str) -> ModelRef:
    try:
        return _resolve(text)
    except ModelOpenError as e:
        raise ProfileError(str(e)) from e


def disk_bytes(path: Path | None) -> int | None:
    if path is None:
        return None
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for pattern in WEIGHT_FILES for f in path.glob(pattern))


def build_model(spec: ModelRef, dtype: str, device: str = "cpu", seed: int = 0, group_size: int = 32,
                skip_unsupported: bool = False, pack: bool = True):
    """`open_model` with profile's default (fp32/bf16 packed on the CPU) and errors as ProfileError."""
    try:
        return open_model(spec, dtype, device, pack=pack, group_size=group_size,
                          skip_unsupported=skip_unsupported, seed=seed)
    except ModelOpenError as e:
        raise ProfileError(str(e)) from e
