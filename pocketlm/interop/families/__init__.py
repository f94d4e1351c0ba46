"""The Hugging Face families pocketlm reads and writes, one small module each (or per close group).

Every module in this package that defines `FAMILIES` (a tuple of `Family` records) is registered:
adding a family is one module here plus its tiny config in the parity suite (tests/hf_tiny.py).
The drivers (`interop.hf`, `interop.hf_config`, `export.gguf`) hold no family names.
"""

from __future__ import annotations

import importlib
import pkgutil

from pocketlm.interop.families.base import Family, GGUFArch, UnsupportedModelError
from pocketlm.model.config import ModelConfig

# llama.cpp runs a llama-shaped model of any family as `llama`; families with their own
# architecture declare it (Family.gguf)
GGUF_FALLBACK = "llama"


def _discover() -> dict[str, Family]:
    found: dict[str, Family] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for family in getattr(module, "FAMILIES", ()):
            if family.model_type in found:
                raise RuntimeError(f"family {family.model_type!r} is declared twice (second in {module.__name__})")
            found[family.model_type] = family
    return found


FAMILIES: dict[str, Family] = _discover()
SUPPORTED = tuple(sorted(FAMILIES))
_PICK_ORDER = sorted((f for f in FAMILIES.values() if f.picks is not None), key=lambda f: f.pick_order)


def get_family(model_type: str) -> Family:
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported; supported families: {', '.join(SUPPORTED)}. "
            "Models that need trust_remote_code (OpenELM, MiniCPM-1/2, Qwen-1) are not loaded from code.")
    return FAMILIES[model_type]


def export_family(cfg: ModelConfig) -> str:
    """The HF model_type a config is saved as: where it came from, else the first family that picks it."""
    if "hf_model_type" in cfg.extra:
        return cfg.extra["hf_model_type"]
    return next(f.model_type for f in _PICK_ORDER if f.picks(cfg))


def gguf_arch(cfg: ModelConfig) -> GGUFArch:
    """The llama.cpp architecture `cfg` is exported as (it may still refuse the config: `unsupported`)."""
    family = FAMILIES.get(export_family(cfg))
    return family.gguf if family is not None and family.gguf is not None else FAMILIES[GGUF_FALLBACK].gguf


__all__ = ["FAMILIES", "SUPPORTED", "Family", "GGUFArch", "export_family", "get_family", "gguf_arch"]
