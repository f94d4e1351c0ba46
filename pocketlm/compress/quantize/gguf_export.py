"""GGUF files that carry GPTQ / AWQ / RTN codes exactly: quantize on the GGUF type's grid, write the bytes.

`export_quantized_gguf(model, path, "Q4_K", "gptq", calib)` runs the driver on `gguf_grid("Q4_K")`
without kernels (the model keeps float layers holding the dequantized weights), turns each target's
codes into ggml block bytes, applies the family's GGUF layout change (a row permutation of q/k for
llama.cpp's RoPE: rows are whole blocks, so permuting byte rows is exact) and hands them to
`export.gguf.export_gguf` as tensor overrides; every other tensor is written as `rest` (F16 default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from pocketlm.compress.quantize.driver import quantize
from pocketlm.compress.quantize.gguf_grids import BlockGrid, gguf_grid
from pocketlm.compress.report import QuantReport
from pocketlm.export.gguf import GGUFExportError, export_gguf, placements
from pocketlm.interop.families import gguf_arch
from pocketlm.model.quantize import GridError
from pocketlm.model.transformer import Transformer


def _row_permutation(transform: Any, shape: tuple[int, int], cfg: Any, layer: int) -> np.ndarray:
    """The rows a GGUF layout change moves, found by passing row indices through it."""
    index = torch.arange(shape[0], dtype=torch.float32)[:, None].expand(shape).contiguous()
    moved = transform.to_gguf(index, cfg, layer)
    perm = moved[:, 0].long()
    if tuple(moved.shape) != shape or not torch.equal(moved, perm[:, None].float().expand(shape)):
        raise GGUFExportError("this family's GGUF layout change is not a row permutation; its quantized codes "
                              "cannot be written exactly (export the float model with --method rtn)")
    return perm.numpy()


def gguf_overrides(model: Transformer, codes: dict[str, tuple], grid: BlockGrid) -> dict[str, tuple[np.ndarray, Any]]:
    """GGUF tensor name -> (block bytes, ggml type) for every quantized target of `model`.

    A GGUF tensor made of several pocketlm matrices (a fused q/k/v) takes their block rows side by side;
    one matrix split over several GGUF tensors is refused (its codes are not written per piece)."""
    cfg = model.config
    arch = gguf_arch(cfg)
    state = model.state_dict()
    out, placed = {}, set()
    for p in placements(cfg, arch, state):
        targets = [n.removesuffix(".weight") for n in p.src]
        if not any(t in codes for t in targets):
            continue
        if not all(t in codes for t in targets) or len(p.dst) > 1:
            raise GGUFExportError(f"GGUF tensor {p.dst[0]} is not one quantized matrix or a row stack of them; "
                                  "its codes cannot be written exactly (export with --method rtn)")
        raw = np.concatenate([grid.to_bytes(codes[t][0].int(), *codes[t][1]) for t in targets])
        if p.key in arch.transforms:
            rows = sum(state[n].shape[0] for n in p.src)
            raw = raw[_row_permutation(arch.transforms[p.key], (rows, state[p.src[0]].shape[1]), cfg, p.layer)]
        out[p.dst[0]] = (np.ascontiguousarray(raw), grid.ggml_type)
        placed.update(targets)
    missing = sorted(set(codes) - placed)
    if missing:
        raise GGUFExportError(f"quantized matrices {missing[:3]} have no GGUF tensor of their own")
    return out


def export_quantized_gguf(model: Transformer, path: str | Path, qtype: str = "Q4_K", method: str = "gptq",
                          calib: torch.Tensor | None = None, *, rest: str = "F16",
                          tokenizer_json: str | Path | None = None, **options: Any) -> QuantReport:
    """Quantize `model` (in place: float layers with the dequantized weights) on `qtype`'s grid and write
    the GGUF file; returns the driver's report with `disk_bytes` set."""
    grid = gguf_grid(qtype)
    if model.config.n_experts:
        raise GridError("routed experts are stacked into one GGUF tensor per kind; GPTQ/AWQ GGUF export handles "
                        "dense models (export the MoE with --method rtn, through llama.cpp's quantizer)")
    gguf_arch(model.config)  # an architecture GGUF cannot express fails before any work
    report = quantize(model, method, calib=calib, grid=grid, kernels=False, **options)
    overrides = gguf_overrides(model, report.codes, grid)
    path = export_gguf(model, path, rest, tokenizer_json, tensor_overrides=overrides)
    report.disk_bytes = Path(path).stat().st_size
    return report
