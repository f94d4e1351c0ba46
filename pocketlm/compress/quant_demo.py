"""`pocketlm demo` section for quantization: RTN vs GPTQ vs AWQ at 4 and 3 bits on the demo model, a table
and a figure of perplexity and KL against bits per weight, and one GPTQ checkpoint in the int4 kernels."""

from __future__ import annotations

from pathlib import Path

import torch

from pocketlm.compress.calibration import calibration_batches, encode_text
from pocketlm.compress.prune.checkpoint import DEFAULT_EVAL_TEXT
from pocketlm.compress.quantize.sweep import quant_figure, quant_sweep, quant_table

CALIB = "bundled:16x128"  # the demo model's trained context is 128 tokens
GROUP = 32  # the tiny preset's FFN width (352) splits only into groups of 32


def run_quant_demo(out_dir: Path, model_dir: Path | None = None) -> dict:
    """Quantize the demo model (`model_dir`, default the cached tiny preset) by each method at 4 and 3 bits."""
    from pocketlm.interop import save_native
    from pocketlm.runtime import open_model, open_tokenizer
    from pocketlm.train.fixtures import trained_preset

    model_dir = Path(model_dir) if model_dir else trained_preset("tiny")[0]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tok = open_model(model_dir, "fp32"), open_tokenizer(model_dir)
    calib, record = calibration_batches(CALIB, tok, seed=0)
    heldout = torch.tensor(encode_text(tok, DEFAULT_EVAL_TEXT.read_text())[:4096])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: one thread beats two spin-waiting ones on a shared machine
    try:
        models: dict = {}
        rows = quant_sweep(model, calib, heldout, calib.shape[1], (4, 3), GROUP, models=models)
    finally:
        torch.set_num_threads(threads)
    kernel_model = models[("gptq", 4)]
    save_native(kernel_model, out_dir / "gptq_int4", tokenizer=tok)
    weight_bytes = sum(b.numel() * b.element_size() for b in list(kernel_model.parameters()) + list(kernel_model.buffers()))
    quant_figure(rows, out_dir / "quant_sweep.png", "demo model: RTN vs GPTQ vs AWQ (asymmetric, groups of 32)")
    by = {(r["method"], r["bits"]): r for r in rows}
    rise = {k: r["ppl"] - r["float_ppl"] for k, r in by.items()}
    markdown = "\n".join([
        f"Quantized the demo model's attention and FFN matrices (embeddings and LM head stay float, as in the "
        f"reference code) onto asymmetric grids with groups of {GROUP} columns, calibration `{record['spec']}` "
        f"(seed 0); held-out: the bundled corpus's held-out documents, which training never reads "
        f"({heldout.numel()} tokens, windows of {calib.shape[1]}):", "",
        quant_table(rows), "",
        "![perplexity and KL vs bits per weight](quant_sweep.png)", "",
        f"Perplexity increase over float: at 4 bits RTN {rise[('rtn', 4)]:+.3f}, GPTQ {rise[('gptq', 4)]:+.3f}, "
        f"AWQ {rise[('awq', 4)]:+.3f}; at 3 bits RTN {rise[('rtn', 3)]:+.3f}, GPTQ {rise[('gptq', 3)]:+.3f}, "
        f"AWQ {rise[('awq', 3)]:+.3f} (the GPTQ README's LLaMA-7B ordering: GPTQ well below RTN, most at 3 bits).", "",
        f"`gptq_int4/` is the 4-bit GPTQ model as a pocketlm checkpoint ({weight_bytes / 1e6:.2f} MB of weights "
        "in memory): `pocketlm eval` and `pocketlm profile` open it straight into the int4 kernels."])
    return {"title": "Shrink: quantization (RTN, GPTQ, AWQ)", "markdown": markdown,
            "metrics": {"sweep": rows, "gptq_int4": {"weight_bytes": weight_bytes}}}
