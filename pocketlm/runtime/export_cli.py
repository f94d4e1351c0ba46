"""`export_model`: a model (catalog name, HF or pocketlm directory, config) as the llama.cpp GGUF file of
its architecture, float or quantized by the GGUF writer / llama.cpp's quantizer. The `pocketlm export`
command lives in `compress/export_cli.py`, which also writes GPTQ / AWQ / RTN codes (`--method`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def export_model(model: str, out: Path, qtype: str = "Q4_0", tokenizer: Path | None = None,
                 stand_in_vocab: bool = True, seed: int = 0) -> dict:
    """Open `model` (float; fp32 for F32, else bf16 weights), write its GGUF; what was written, as a dict."""
    from pocketlm.export.gguf import GGUFExportError, check_qtype, export_gguf, fallbacks, unsupported_reasons
    from pocketlm.interop.families import gguf_arch
    from pocketlm.runtime import open_model, resolve

    check_qtype(qtype)  # before the model is resolved or opened
    ref = resolve(model)
    reasons = unsupported_reasons(ref.config)
    if reasons:  # before any weights are built
        raise GGUFExportError(f"cannot export {model} to GGUF: {reasons[0]}")
    if tokenizer is None and ref.path is not None:
        folder = Path(ref.path) if Path(ref.path).is_dir() else Path(ref.path).parent
        tokenizer = next((folder for n in TOKENIZER_FILES if (folder / n).is_file()), None)
    net = open_model(ref, "fp32" if qtype.upper() == "F32" else "bf16", seed=seed)
    t0 = time.perf_counter()
    path = export_gguf(net, out, qtype, tokenizer_json=tokenizer, stand_in_vocab=stand_in_vocab)
    return {"path": str(path), "architecture": gguf_arch(ref.config).arch, "qtype": qtype.upper(),
            "bytes": path.stat().st_size, "seconds": round(time.perf_counter() - t0, 2),
            "tokenizer": str(tokenizer) if tokenizer else "stand-in (token ids only)",
            "fallbacks": fallbacks(path, qtype)}
