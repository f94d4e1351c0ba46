"""Quantize a saved model into a new directory with the measured report beside it (`pocketlm quantize`).

Output (built in a hidden sibling folder, renamed into place at the end): pocketlm's quantized
checkpoint (`pocketlm.json` + `model.safetensors` holding codes, scales and zeros, loaded straight
into the int kernels by `pocketlm eval` / `profile`), or with `gguf=QTYPE` a `model.gguf` holding the
codes on that GGUF type's grid, or with `fmt="compressed-tensors"` a Hugging Face folder in the
compressed-tensors pack-quantized layout (`compressed_tensors_format`: what vLLM serves; asymmetric
grids then use integer zero points, the only kind the format holds); plus `quant_report.json`:
per-layer error, held-out perplexity, KL (float || quantized) mean / p99, top-1 agreement, disk bytes,
wall time and peak RSS.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pocketlm.compress.calibration import CalibSpec, calibration_batches, encode_text
from pocketlm.compress.measure import compare_on_tokens
from pocketlm.compress.prune.checkpoint import DEFAULT_EVAL_TEXT, OutputExistsError, open_model_and_tokenizer
from pocketlm.compress.quantize.compressed_tensors_format import check_grid, check_model, save_compressed_tensors
from pocketlm.compress.quantize.driver import check_request, quantize
from pocketlm.compress.quantize.gguf_export import export_quantized_gguf
from pocketlm.compress.quantize.gguf_grids import gguf_grid
from pocketlm.compress.report import QuantReport, peak_rss_bytes
from pocketlm.model.quantize import IntGrid
from pocketlm.utils import atomic_dir

FORMATS = ("pocketlm", "compressed-tensors")
OUT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def quantize_checkpoint(model_ref: str | Path, out_dir: str | Path, method: str = "gptq", bits: int = 4,
                        group_size: int | None = 128, sym: bool = False, *, calib: str = "bundled:128x512",
                        seed: int = 0, gguf: str | None = None, tokenizer: str | Path | None = None,
                        eval_text: str | Path | None = None, eval_tokens: int = 16384, overwrite: bool = False,
                        measure: bool = True, progress: bool = False, fmt: str = "pocketlm",
                        dtype: str | None = None, **options: Any) -> QuantReport:
    """Load `model_ref` in fp32, quantize it, measure it against the float model (unless not `measure`)
    and write `out_dir`.

    `options` go to the driver (act_order, static_groups, damp, skip, ...). `fmt`: "pocketlm" (the int kernels'
    checkpoint) or "compressed-tensors"; `dtype` (float32 default, bfloat16 or float16) sets the float tensors
    of either (compressed-tensors: its scales too, what vLLM serves in; pocketlm: the layers left float,
    bfloat16 being what `open_model(..., "int4")` runs); `gguf` replaces either. The float model the
    report compares against is opened again after quantization, so two fp32 copies never coexist."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if gguf and fmt != "pocketlm":
        raise ValueError(f"--gguf writes a GGUF file and --format {fmt} an HF folder: choose one")
    if dtype is not None and (gguf or dtype not in OUT_DTYPES):
        raise ValueError(f"--dtype {dtype}: a pocketlm or compressed-tensors checkpoint's float dtype, one of "
                         f"{', '.join(OUT_DTYPES)} (a GGUF file's float tensors follow its type)")
    ct_grid = None
    if fmt == "compressed-tensors":
        # scales on the bf16 grid (what vLLM serves in), zero points integers: the format's own grid
        ct_grid = IntGrid(bits, group_size, sym, torch.bfloat16, integer_zero=not sym)
        check_grid(ct_grid)
    grid = ct_grid or (gguf_grid(gguf) if gguf else IntGrid(bits, group_size, sym))
    check_request(method, grid, kernels=not gguf and ct_grid is None, **options)  # before any loading
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; choose another --out or pass --overwrite")
    t0 = time.perf_counter()
    model, tok = open_model_and_tokenizer(model_ref, tokenizer)
    if ct_grid is not None:
        check_model(model)  # refused before any calibration or quantization work
    calib_ids, record = None, None
    if method != "rtn" or calib:
        if tok is None:
            raise ValueError(f"{model_ref} has no tokenizer to turn calibration text into tokens: save tokenizer "
                             "files next to the model, or pass --tokenizer PATH")
        spec = CalibSpec.parse(calib, default_seq_len=min(512, model.config.max_seq_len))
        if spec.seq_len > model.config.max_seq_len:
            raise ValueError(f"calibration length {spec.seq_len} exceeds the model's context "
                             f"{model.config.max_seq_len}; use e.g. --calib {spec.source}:{spec.n}x{model.config.max_seq_len}")
        calib_ids, record = calibration_batches(spec, tok, seed=seed)
    measured = measure and tok is not None
    with atomic_dir(out) as tmp:
        if gguf:
            tok_json = Path(model_ref) / "tokenizer.json"
            report = export_quantized_gguf(model, tmp / "model.gguf", gguf, method, calib_ids, progress=progress,
                                           tokenizer_json=tok_json if tok_json.is_file() else None, **options)
        elif ct_grid is not None:
            report = quantize(model, method, calib=calib_ids, grid=ct_grid, kernels=False, progress=progress, **options)
            save_compressed_tensors(model, report.codes, ct_grid, tmp, tokenizer=tok,
                                    dtype=OUT_DTYPES[dtype] if dtype else None)
            report.disk_bytes = (tmp / "model.safetensors").stat().st_size
        else:
            from pocketlm.interop import save_native

            report = quantize(model, method, bits, group_size, sym, calib_ids, progress=progress,
                              float_dtype=OUT_DTYPES[dtype] if dtype else None, **options)
            save_native(model, tmp, tokenizer=tok)
            report.disk_bytes = (tmp / "model.safetensors").stat().st_size
        report.calibration = record
        if measured:
            dense = open_model_and_tokenizer(model_ref, tokenizer)[0]  # the same float model, opened again
            text_path = Path(eval_text) if eval_text else DEFAULT_EVAL_TEXT
            ids = torch.tensor(encode_text(tok, text_path.read_text())[:eval_tokens])
            window = calib_ids.shape[1] if calib_ids is not None else min(512, model.config.max_seq_len)
            report.evaluation = {"text": str(text_path), **compare_on_tokens(dense, model, ids, window)}
        report.options["total_s"] = time.perf_counter() - t0
        report.peak_rss_bytes = peak_rss_bytes()
        report.write(tmp / "quant_report.json")
    return report


def quantized_gguf(model_ref: str | Path, path: str | Path, qtype: str = "Q4_K", method: str = "gptq", *,
                   calib: str = "bundled:128x512", seed: int = 0, tokenizer: str | Path | None = None,
                   progress: bool = False, **options: Any) -> QuantReport:
    """`pocketlm export gguf MODEL --method`: the `model.gguf` that `quantize_checkpoint(gguf=qtype)` writes,
    alone at `path` (moved into place whole; no held-out measurement). RTN needs no calibration."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        report = quantize_checkpoint(model_ref, Path(tmp) / "out", method, gguf=qtype, seed=seed, tokenizer=tokenizer,
                                     calib="" if method == "rtn" else calib, measure=False, progress=progress,
                                     **options)
        os.replace(Path(tmp) / "out" / "model.gguf", path)
    return report
