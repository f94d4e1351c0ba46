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

# a family without a GGUF architecture of its own is tried as llama.cpp's `llama` first (Family.gguf)
GGUF_FALLBACK = "llama"


def _discover() -> tuple[dict[str, Family], list[GGUFArch]]:
    found: dict[str, Family] = {}
    gguf_only: list[GGUFArch] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for family in getattr(module, "FAMILIES", ()):
            if family.model_type in found:
                raise RuntimeError(f"family {family.model_type!r} is declared twice (second in {module.__name__})")
            found[family.model_type] = family
        gguf_only += getattr(module, "GGUF_ARCHS", ())
    return found, gguf_only


FAMILIES, _GGUF_ONLY = _discover()
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


# every llama.cpp architecture pocketlm writes: the families' own, then those of models that load from
# no HF family here (remote-code models such as MiniCPM-1/2 and OpenELM)
GGUF_ARCHS: tuple[GGUFArch, ...] = tuple({id(a): a for a in [f.gguf for f in FAMILIES.values() if f.gguf is not None]
                                          + _GGUF_ONLY}.values())


def gguf_arch(cfg: ModelConfig) -> GGUFArch:
    """The llama.cpp architecture `cfg` is exported as: its family's own when that graph computes the
    config, else the first that does (a llama-shaped Qwen runs as `llama`); when none does, its
    family's own (or `llama`), whose `unsupported` says why."""
    family = FAMILIES.get(export_family(cfg))
    own = family.gguf if family is not None and family.gguf is not None else FAMILIES[GGUF_FALLBACK].gguf
    if not own.unsupported(cfg):
        return own
    return next((a for a in GGUF_ARCHS if not a.unsupported(cfg)), own)


def gguf_refusal(cfg: ModelConfig) -> str:
    """Why llama.cpp cannot run `cfg` as any architecture ('' when one runs it)."""
    arch = gguf_arch(cfg)
    reasons = arch.unsupported(cfg)
    if not reasons:
        return ""
    family = FAMILIES.get(export_family(cfg))
    if family is not None and family.no_gguf:
        return family.no_gguf
    return (f"{cfg.name or 'this model'} matches no llama.cpp architecture; as llama.cpp's {arch.arch!r}: "
            + "; ".join(reasons))


__all__ = ["FAMILIES", "GGUF_ARCHS", "SUPPORTED", "Family", "GGUFArch", "export_family", "get_family", "gguf_arch",
           "gguf_refusal"]
