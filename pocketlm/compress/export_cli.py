"""`pocketlm export gguf MODEL`: a model as the llama.cpp GGUF file of its architecture.

Without `--method` the float weights go to the GGUF writer (F32/F16/BF16/Q8_0/Q4_0) or llama.cpp's own
quantizer (K-quants and the rest), `runtime.export_cli.export_model`. With `--method rtn|gptq|awq` the
block matrices are quantized by pocketlm on the type's grid and their codes written exactly, the same
file `pocketlm quantize --gguf TYPE` writes (`compress.quantize.checkpoint.quantized_gguf`). The command
sits in compress, the layer that may import both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

METHODS = ("rtn", "gptq", "awq")


def register(app: typer.Typer) -> None:
    export_app = typer.Typer(help="Write a model in another runtime's format: `pocketlm export gguf MODEL`.",
                             no_args_is_help=True)
    app.add_typer(export_app, name="export")

    @export_app.command("gguf")
    def gguf_cmd(model: str = typer.Argument(..., help="catalog name, HF / pocketlm directory, or config JSON"),
                 qtype: str = typer.Option("Q4_0", help="F32, F16, BF16, Q8_0, Q4_0, or llama.cpp's K-quants "
                                           "(Q4_K_M, ...); with --method: Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q6_K"),
                 method: Optional[str] = typer.Option(None, help="rtn, gptq or awq: pocketlm's codes on QTYPE's grid, "
                                                      "written exactly (default: the GGUF writer / llama.cpp's "
                                                      "quantizer on the float weights)"),
                 calib: str = typer.Option("bundled:128x512", help="--method gptq/awq: calibration SOURCE:NxL"),
                 awq_clip: bool = typer.Option(False, "--awq-clip", help="--method awq: also llm-awq's "
                                               "weight-clipping search"),
                 out: Path = typer.Option(None, help="the .gguf file (default: <model name>-<qtype>.gguf)"),
                 tokenizer: Path = typer.Option(None, help="tokenizer.json / tokenizer.model (default: the "
                                                "model directory's)"),
                 stand_in_vocab: bool = typer.Option(True, help="without a tokenizer, write a stand-in "
                                                     "vocabulary (llama.cpp runs on token ids)"),
                 seed: int = typer.Option(0, help="seed of random weights (catalog names) and calibration sampling")
                 ) -> None:
        """Export MODEL as the llama.cpp architecture of its family, tensors of type QTYPE."""
        out = out or Path(f"{Path(model).name}-{qtype.upper()}.gguf")
        if method is None:
            from pocketlm.runtime.export_cli import export_model

            print(json.dumps(export_model(model, out, qtype, tokenizer, stand_in_vocab, seed)))
            return
        if method not in METHODS:
            raise typer.BadParameter(f"unknown method {method!r}; choose rtn, gptq or awq (or leave --method out "
                                     "for the GGUF writer / llama.cpp's quantizer)", param_hint="--method")
        from pocketlm.compress.quantize.checkpoint import quantized_gguf
        from pocketlm.compress.quantize.gguf_grids import gguf_grid

        gguf_grid(qtype)  # a type pocketlm cannot write exactly fails before the model is opened
        report = quantized_gguf(model, out, qtype, method, calib=calib, seed=seed, tokenizer=tokenizer, progress=True,
                                **({"awq_clip": True} if awq_clip else {}))
        print(json.dumps({"path": str(out), "qtype": qtype.upper(), "method": method, "bytes": out.stat().st_size,
                          "seconds": round(report.wall_s, 2), "matrices": len(report.layers),
                          "calibration": report.calibration}, default=str))
