"""Instantiate a catalog architecture with seeded random weights and save it (HF format where possible).

Cost studies (latency, memory, FLOPs) need the architecture, not trained weights. Memory: the model is
materialised in full (4 bytes per parameter in float32, 2 in bfloat16), e.g. ~15 GB for Phi-3-mini in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pocketlm.model import costs
from pocketlm.model.transformer import Transformer
from pocketlm.survey.catalog import CatalogEntry, CatalogError, entry_to_config, get_entry

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class BuildResult:
    name: str
    out_dir: Path
    format: str  # "hf" | "native"
    params: int
    note: str


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise CatalogError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def build_model(entry: CatalogEntry | str, seed: int = 0, dtype: torch.dtype = torch.float32) -> Transformer:
    """The entry's architecture with weights drawn from a seeded generator."""
    entry = get_entry(entry) if isinstance(entry, str) else entry
    cfg = entry_to_config(entry)
    torch.manual_seed(seed)
    model = Transformer(cfg)
    return model.to(dtype).eval()


def memory_estimate(entry: CatalogEntry, dtype: torch.dtype = torch.float32) -> int:
    """Bytes the weights need in memory."""
    return costs.param_counts(entry_to_config(entry))["total"] * torch.tensor([], dtype=dtype).element_size()


def hf_blocker(entry: CatalogEntry) -> str | None:
    """Why no transformers family expresses this architecture exactly (None: it saves in HF format)."""
    from pocketlm.interop import UnsupportedModelError, config_from_hf
    from pocketlm.interop.hf import export_family
    from pocketlm.interop.hf_config import hf_config_from

    cfg = entry_to_config(entry)
    family = export_family(cfg)
    try:
        back = config_from_hf(hf_config_from(cfg, family))
    except (UnsupportedModelError, ValueError) as e:
        return f"{family}: {e}"
    mine, theirs = cfg.to_dict(), back.to_dict()
    differ = sorted(k for k in mine if k not in ("name", "extra") and mine[k] != theirs[k])
    return f"as {family} it would change {', '.join(differ)}" if differ else None


def build(name: str, out_dir: str | Path, seed: int = 0, dtype: str = "float32", fmt: str = "auto") -> BuildResult:
    """Build `name` and save it under out_dir.

    fmt="hf": Hugging Face format (fails with the reason if no transformers family expresses the model);
    fmt="native": pocketlm format; fmt="auto": HF when possible, else native (OpenELM's layer-wise widths,
    MobiLlama's shared FFN, MiniCPM-1/2's scalings have no transformers family).
    """
    from pocketlm.interop import UnsupportedModelError, save_hf, save_native

    if fmt not in ("auto", "hf", "native"):
        raise CatalogError(f"unknown format {fmt!r}; choose auto, hf or native")
    entry = get_entry(name)
    blocker = hf_blocker(entry) if fmt != "native" else None
    if fmt == "hf" and blocker:
        raise UnsupportedModelError(f"{entry.name} has no exact Hugging Face family ({blocker}); "
                                    "use --format native or auto")
    model = build_model(entry, seed=seed, dtype=resolve_dtype(dtype))
    params = sum(p.numel() for p in model.parameters())
    out = Path(out_dir)
    if fmt != "native" and blocker is None:
        save_hf(model, out)
        return BuildResult(entry.name, out, "hf", params, "loads with transformers.AutoModelForCausalLM")
    note = "saved in pocketlm format" + (f" (no exact Hugging Face family: {blocker})" if blocker else "")
    save_native(model, out)
    return BuildResult(entry.name, out, "native", params, note)
