"""`pocketlm export gguf MODEL`: a model (catalog name, HF or pocketlm directory, config) as the
llama.cpp GGUF file of its architecture."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def export_model(model: str, out: Path, qtype: str = "Q4_0", tokenizer: Path | None = None,
                 stand_in_vocab: bool = True, seed: int = 0) -> dict:
    """Open `model` (float; fp32 for F32, else bf16 weights), write its GGUF; what was written, as a dict."""
    from pocketlm.export.gguf import GGUFExportError, export_gguf, fallbacks, unsupported_reasons
    from pocketlm.interop.families import gguf_arch
    from pocketlm.runtime import open_model, resolve

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


def register(app: typer.Typer) -> None:
    export_app = typer.Typer(help="Write a model in another runtime's format: `pocketlm export gguf MODEL`.",
                             no_args_is_help=True)
    app.add_typer(export_app, name="export")

    @export_app.command("gguf")
    def gguf_cmd(model: str = typer.Argument(..., help="catalog name, HF / pocketlm directory, or config JSON"),
                 qtype: str = typer.Option("Q4_0", help="F32, F16, BF16, Q8_0, Q4_0, or llama.cpp's K-quants "
                                           "(Q4_K_M, ...)"),
                 out: Path = typer.Option(None, help="the .gguf file (default: <model name>-<qtype>.gguf)"),
                 tokenizer: Path = typer.Option(None, help="tokenizer.json / tokenizer.model (default: the "
                                                "model directory's)"),
                 stand_in_vocab: bool = typer.Option(True, help="without a tokenizer, write a stand-in "
                                                     "vocabulary (llama.cpp runs on token ids)"),
                 seed: int = typer.Option(0, help="seed of random weights (catalog names)")) -> None:
        """Export MODEL as the llama.cpp architecture of its family, tensors of type QTYPE."""
        out = out or Path(f"{Path(model).name}-{qtype.upper()}.gguf")
        print(json.dumps(export_model(model, out, qtype, tokenizer, stand_in_vocab, seed)))
